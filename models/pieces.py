"""What a state-dict key belongs to: its piece of the model and its block.

A leaf module (no project imports), so the model files and ``models/parts.py`` share it.
"""

from __future__ import annotations


def piece_of(key: str) -> str:
    """The piece a state-dict key belongs to: ``transformer.h.3.attn.c_attn.weight`` -> ``transformer.h.3``."""
    parts = key.split(".")
    if parts[0] in ("lm_head", "head"):
        return parts[0]
    return ".".join(parts[:3]) if parts[1] == "h" else ".".join(parts[:2])


def block_of(key: str) -> int | None:
    """The block a parameter name is in (``transformer.h.3.attn.c_attn.lora_A`` -> 3); None outside the blocks."""
    parts = key.split(".")
    return int(parts[2]) if len(parts) > 2 and parts[1] == "h" else None
