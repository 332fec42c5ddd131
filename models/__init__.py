"""GPT-2, LoRA and the split: plain torch, no torch.distributed, no environment reads."""
