"""The roles, one module each: ``centralized`` (CenLoRA, one process), ``server`` (rank 0) and
``client`` (ranks 1..N, SplitLoRA and FedLoRA); ``common``: what they share."""
