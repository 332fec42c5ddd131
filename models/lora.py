"""LoRA for GPT-2: low-rank adapters added beside frozen Linear layers (Hu et al., 2021).

For a frozen weight W (out, in), an adapter adds ``scaling * B @ A`` with A (r, in),
B (out, r) and ``scaling = alpha / r``. A starts kaiming-uniform and B at zero, so a
freshly wrapped model computes exactly what it did before.

Targets (one name per adapted output range):
    q, k, v    the three n_embd-wide output slices of the fused ``attn.c_attn``
    attn_proj  ``attn.c_proj``; mlp_fc: ``mlp.c_fc``; mlp_proj: ``mlp.c_proj``
               (whole Linear, adapter key "all")
The default ("q", "v") is the LoRA paper's GPT-2 recipe. Parameter names look like
``transformer.h.0.attn.c_attn.adapters.q.lora_A``; the wrapped Linear keeps its own
``weight``/``bias`` names, so the base checkpoint keys do not change.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .init_replay import replay_draws

__all__ = [
    "TARGETS",
    "LoRAConfig",
    "LoRAAdapter",
    "LoRALinear",
    "apply_lora",
    "iter_lora_adapters",
    "lora_state_dict",
    "load_lora_state_dict",
    "set_lora_trainable",
    "merge_lora",
    "unmerge_lora",
    "count_trainable_parameters",
]

# target name -> (module path inside a block, index of its n_embd-wide output slice or
# None for the whole Linear)
TARGETS: dict[str, tuple[str, int | None]] = {
    "q": ("attn.c_attn", 0),
    "k": ("attn.c_attn", 1),
    "v": ("attn.c_attn", 2),
    "attn_proj": ("attn.c_proj", None),
    "mlp_fc": ("mlp.c_fc", None),
    "mlp_proj": ("mlp.c_proj", None),
}


@dataclass
class LoRAConfig:
    r: int = 4
    alpha: float = 32.0
    dropout: float = 0.1  # on the input of the LoRA path only
    targets: tuple[str, ...] = ("q", "v")
    # Global indices of the blocks that get adapters (peft's layers_to_transform); None = every block.
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        if self.layers is not None:
            self.layers = tuple(self.layers)
        self.validate()

    def validate(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"LoRAConfig.r must be an int >= 1, got {self.r!r}")
        if not self.alpha > 0:
            raise ValueError(f"LoRAConfig.alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRAConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not self.targets:
            raise ValueError(f"LoRAConfig.targets must not be empty; choose from {list(TARGETS)}")
        for t in self.targets:
            if t not in TARGETS:
                raise ValueError(f"unknown LoRA target {t!r}; valid targets: {list(TARGETS)}")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"LoRAConfig.targets has duplicates: {self.targets!r}")
        if self.layers is not None:
            if not self.layers or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in self.layers):
                raise ValueError(f"LoRAConfig.layers must be None or block indices >= 0, got {self.layers!r}")
            if len(set(self.layers)) != len(self.layers):
                raise ValueError(f"LoRAConfig.layers has duplicates: {self.layers!r}")


class LoRAAdapter(nn.Module):
    """One low-rank update ``scaling * B @ (A * rank_mask[:, None])`` of shape (out, in).

    ``rank_mask`` (r,) switches individual ranks off (HetLoRA-style rank pruning);
    ``mask_gradients`` stops selected ranks from training (LoRA-A2 rank selection).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.r = r
        self.scaling = alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.empty(out_features, r, device=device, dtype=dtype))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.register_buffer("rank_mask", torch.ones(r, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.lora_A.is_meta:
            # A block this part does not hold (models/parts.py): draw the same random
            # numbers as the whole model's adapter would, so later adapters get its values.
            replay_draws("uniform", self.lora_A.numel(), self.lora_A.dtype)  # kaiming_uniform_
            return
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in) -> LoRA contribution (..., out)."""
        z = (self.dropout(x) @ self.lora_A.T) * self.rank_mask  # (..., r)
        return (z @ self.lora_B.T) * self.scaling

    def delta_weight(self) -> Tensor:
        """The update this adapter adds to the base weight, (out, in)."""
        return (self.lora_B @ (self.lora_A * self.rank_mask[:, None])) * self.scaling

    def mask_gradients(self, rank_keep: Tensor) -> None:
        """Zero the gradients of ranks not in ``rank_keep`` (bool (r,)): rows of A, columns of B.

        Call between ``backward()`` and ``optimizer.step()``. Masking gradients alone
        keeps plain SGD from moving those entries; with Adam-style moments or weight
        decay the optimizer state has to be masked as well.
        """
        if rank_keep.dtype != torch.bool or rank_keep.shape != (self.r,):
            raise ValueError(
                f"rank_keep must be a bool tensor of shape ({self.r},), got {rank_keep.dtype} {tuple(rank_keep.shape)}"
            )
        drop = ~rank_keep.to(self.lora_A.device)
        if self.lora_A.grad is not None:
            self.lora_A.grad.masked_fill_(drop[:, None], 0.0)  # rows of A (r, in)
        if self.lora_B.grad is not None:
            self.lora_B.grad.masked_fill_(drop[None, :], 0.0)  # columns of B (out, r)


class LoRALinear(nn.Module):
    """A frozen Linear plus LoRA adapters on some of its output ranges.

    Takes over ``base.weight`` and ``base.bias`` (the same Parameter objects, under the
    same names) and adds ``adapters``, a ModuleDict of ``LoRAAdapter`` keyed by target
    name. ``slices`` maps each adapter key to its output range ``(start, stop)``.
    """

    def __init__(
        self, base: nn.Linear, slices: dict[str, tuple[int, int]], r: int, alpha: float, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.weight = base.weight  # (out, in)
        self.bias = base.bias  # (out,) or None
        self.merged = False
        ordered = sorted(slices.items(), key=lambda kv: kv[1][0])
        self.adapters = nn.ModuleDict()
        # Output ranges in order, each (width, adapter key or None): the forward splits
        # the base output along them and adds the adapters' deltas to their own ranges.
        self._segments: list[tuple[int, str | None]] = []
        pos = 0
        for key, (start, stop) in ordered:
            if not pos <= start < stop <= self.out_features:
                raise ValueError(f"bad or overlapping LoRA slice {key!r}: {(start, stop)}")
            if start > pos:
                self._segments.append((start - pos, None))
            self._segments.append((stop - start, key))
            self.adapters[key] = LoRAAdapter(
                self.in_features, stop - start, r, alpha, dropout, device=self.weight.device, dtype=self.weight.dtype
            )
            pos = stop
        if pos < self.out_features:
            self._segments.append((self.out_features - pos, None))
        self._starts = {key: start for key, (start, _) in slices.items()}

    def base_rows(self, key: str) -> Tensor:
        """The rows of the frozen ``weight`` that adapter ``key`` adds to: a view (out_key, in).

        For strategies that merge an aggregated update into the base (FLoRA).
        """
        start = self._starts[key]
        return self.weight[start : start + self.adapters[key].lora_B.shape[0]]

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight, self.bias)  # (..., out)
        if self.merged:
            return y
        if len(self._segments) == 1:
            return y + self.adapters[self._segments[0][1]](x)
        # Out of place (split + cat), so autograd sees no in-place edit of y.
        parts = y.split([width for width, _ in self._segments], dim=-1)
        return torch.cat(
            [p if key is None else p + self.adapters[key](x) for p, (_, key) in zip(parts, self._segments)],
            dim=-1,
        )

    @torch.no_grad()
    def merge(self) -> None:
        """Add every adapter's delta into ``weight``; the forward then skips the adapters."""
        if self.merged:
            raise RuntimeError("LoRA weights are already merged")
        for key, adapter in self.adapters.items():
            start = self._starts[key]
            self.weight[start : start + adapter.lora_B.shape[0]] += adapter.delta_weight()
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the adapters' current deltas again (do not train while merged)."""
        if not self.merged:
            raise RuntimeError("LoRA weights are not merged")
        for key, adapter in self.adapters.items():
            start = self._starts[key]
            self.weight[start : start + adapter.lora_B.shape[0]] -= adapter.delta_weight()
        self.merged = False

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, merged={self.merged}"


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> nn.Module:
    """Wrap the targets of every block ``model`` owns (of ``cfg.layers`` only, when given) in
    place; freeze all non-LoRA parameters.

    ``model`` is a GPT2 or a part of one (``model.transformer.h`` holds its blocks, keyed by
    their global index). Returns ``model``.
    """
    cfg.validate()
    by_module: dict[str, list[tuple[str, int | None]]] = {}
    for t in cfg.targets:
        path, index = TARGETS[t]
        by_module.setdefault(path, []).append((t, index))
    for block_name, block in model.transformer["h"].items():
        if cfg.layers is not None and int(block_name) not in cfg.layers:
            continue
        for path, targets in by_module.items():
            parent_path, leaf = path.rsplit(".", 1)
            parent = block.get_submodule(parent_path)
            base = getattr(parent, leaf)
            if not isinstance(base, nn.Linear):
                raise ValueError(
                    f"block {block_name} {path} is {type(base).__name__}, not nn.Linear (is LoRA already applied?)"
                )
            slices = {}
            for t, index in targets:
                if index is None:
                    slices["all"] = (0, base.out_features)
                else:
                    width = base.out_features // 3  # fused q, k, v
                    slices[t] = (index * width, (index + 1) * width)
            setattr(parent, leaf, LoRALinear(base, slices, cfg.r, cfg.alpha, cfg.dropout))
    for name, p in model.named_parameters():
        p.requires_grad_(_is_lora_name(name))
    return model


def _is_lora_name(name: str) -> bool:
    return name.endswith((".lora_A", ".lora_B"))


def iter_lora_adapters(model: nn.Module) -> Iterator[tuple[str, LoRAAdapter]]:
    """(module name, adapter) for every adapter in ``model``, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, LoRAAdapter):
            yield name, module


def iter_lora_linears(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the ``lora_A``/``lora_B`` tensors, keyed by their names in ``model``.

    The tensors are detached but share storage with the model: clone before editing.
    """
    out: dict[str, Tensor] = {}
    for name, adapter in iter_lora_adapters(model):
        out[f"{name}.lora_A"] = adapter.lora_A.detach()
        out[f"{name}.lora_B"] = adapter.lora_B.detach()
    return out


def load_lora_state_dict(
    model: nn.Module, state_dict: dict[str, Tensor], strict: bool = True
) -> tuple[list[str], list[str]]:
    """Copy ``lora_A``/``lora_B`` values into ``model``; return (missing, unexpected) keys.

    With ``strict`` any missing or unexpected key is a ``ValueError`` that lists them;
    a shape mismatch always is.
    """
    params = {}
    for name, adapter in iter_lora_adapters(model):
        params[f"{name}.lora_A"] = adapter.lora_A
        params[f"{name}.lora_B"] = adapter.lora_B
    missing = sorted(set(params) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(params))
    if strict and (missing or unexpected):
        raise ValueError(f"LoRA state dict does not match the model: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        for key, value in state_dict.items():
            if key not in params:
                continue
            if value.shape != params[key].shape:
                raise ValueError(
                    f"shape mismatch for {key}: model {tuple(params[key].shape)}, state dict {tuple(value.shape)}"
                )
            params[key].copy_(value)
    return missing, unexpected


def set_lora_trainable(model: nn.Module, *, A: bool = True, B: bool = True) -> None:
    """Switch training of every ``lora_A`` / ``lora_B`` on or off (e.g. LoRA-A2, FFA-LoRA)."""
    for _, adapter in iter_lora_adapters(model):
        adapter.lora_A.requires_grad_(A)
        adapter.lora_B.requires_grad_(B)


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight (for fast inference); raises if already merged."""
    for _, layer in iter_lora_linears(model):
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo ``merge_lora``; raises if not merged."""
    for _, layer in iter_lora_linears(model):
        layer.unmerge()


def count_trainable_parameters(model: nn.Module) -> int:
    """Number of distinct parameters with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
