"""Split shapes, one module each, registered by name (``split.shape``); see ``base.py``."""

from runtime.split.shapes import u, vanilla  # noqa: F401  (registers the shapes that ship)
from runtime.split.shapes.base import DEFAULT_SHAPE, SHAPES, SplitShape, get_shape, register_shape

__all__ = ["DEFAULT_SHAPE", "SHAPES", "SplitShape", "get_shape", "part_pieces", "register_shape"]


def part_pieces(n_layer: int, role: str, shape: str = DEFAULT_SHAPE, cut: int = 0, head_cut: int | None = None,
                arch: str = "gpt2") -> set[str]:
    """The pieces ``role`` holds in a split of ``shape`` at ``cut`` (and ``head_cut``), for ``arch``."""
    return get_shape(shape).pieces(role, n_layer, cut, head_cut or 0, arch)
