"""Reading Hugging Face GPT-2 checkpoints: locate, parse the config, convert the layout.

Only the four Conv1D weights (stored as (in, out)) are transposed, at load time, into
``nn.Linear`` layout (out, in); every other key is copied (with the ``transformer.``
prefix added where a checkpoint lacks it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

C = TypeVar("C", bound=Any)  # the model's config dataclass (GPT2Config)

_CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _has_checkpoint(d: Path) -> bool:
    return (d / "config.json").is_file() and any((d / f).is_file() for f in _WEIGHT_FILES)


def _resolve_checkpoint_dir(name_or_dir: str | Path, cache_dir: str | Path | None) -> Path:
    path = Path(name_or_dir)
    if path.is_dir():
        if not _has_checkpoint(path):
            raise FileNotFoundError(f"{path} needs config.json and one of {list(_WEIGHT_FILES)}")
        return path
    name = str(name_or_dir)
    # The GPT-2 repos moved from "gpt2" to "openai-community/gpt2"; caches may hold either.
    repo_ids = [name] if "/" in name else [name, f"openai-community/{name}"]
    from huggingface_hub import snapshot_download  # only needed for cache look-ups

    for repo_id in repo_ids:
        try:
            snap = Path(snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True))
        except (OSError, ValueError):  # not cached / not a valid repo id
            continue
        if _has_checkpoint(snap):
            return snap
    where = f"cache_dir={str(cache_dir)!r}" if cache_dir is not None else "the default Hugging Face cache"
    raise FileNotFoundError(
        f"no GPT-2 checkpoint for {name!r}: not a local directory, and repo ids {repo_ids} are not in "
        f"{where} (nothing is downloaded). Pass a directory with config.json and "
        f"{' or '.join(_WEIGHT_FILES)}."
    )


def _config_from_hf(hf: dict, config_type: type[C]) -> C:
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"unsupported activation_function {act!r}: this GPT-2 uses the tanh GELU")
    unsupported = {
        "n_inner": None,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
    }
    for key, expected in unsupported.items():
        if key in hf and hf[key] != expected and not (key == "n_inner" and hf[key] == 4 * hf["n_embd"]):
            raise ValueError(f"unsupported GPT-2 config {key}={hf[key]!r} (expected {expected!r})")
    return config_type(**{f.name: hf[f.name] for f in fields(config_type) if f.name in hf})


def _our_key(hf_key: str) -> str | None:
    """Our name for a checkpoint key; None for keys we do not load."""
    if hf_key.split(".")[-2:] in (["attn", "bias"], ["attn", "masked_bias"]):
        return None  # causal-mask buffers of old checkpoints; we mask inside SDPA
    if hf_key == "lm_head.weight":
        return None  # tied to wte
    return hf_key if hf_key.startswith("transformer.") else "transformer." + hf_key


def _read_weights(ckpt_dir: Path, want: Callable[[str], bool] | None = None) -> dict[str, Tensor]:
    """The checkpoint's tensors (its own key names); with ``want`` (called with our key name),
    only those it accepts: read one by one from safetensors, filtered after a whole read of .bin."""
    def wanted(key: str) -> bool:
        ours = _our_key(key)
        return want is None or (ours is not None and want(ours))

    st = ckpt_dir / "model.safetensors"
    if st.is_file():
        from safetensors import safe_open

        with safe_open(str(st), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if wanted(k)}
    state = torch.load(ckpt_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if wanted(k)}


def _convert_hf_state_dict(hf_state: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """Hugging Face GPT-2 keys/layout -> ours: add the ``transformer.`` prefix where it is
    missing, drop the causal-mask buffers, transpose Conv1D (in, out) to Linear (out, in)."""
    out: dict[str, Tensor] = {}
    for hf_key, value in hf_state.items():
        key = _our_key(hf_key)
        if key is None:
            continue
        if key.endswith(_CONV1D_SUFFIXES):
            value = value.t()
        out[key] = value.to(dtype).contiguous()
    if "transformer.wte.weight" in out:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    return out
