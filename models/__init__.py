"""GPT-2, LoRA, the split and decoding: plain torch and nn only (no distributed code, no environment reads)."""
