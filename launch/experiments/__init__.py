"""Experiment recipes: sweeps of ``launch.train`` runs under torchrun, and their tables.

- ``paper_table``: CenLoRA / SplitLoRA / FedLoRA at LoRA ranks 1, 2, 4, 8 on E2E, scored in
  both reference styles, beside the SplitLoRA paper's table.
- ``cut_rank_sweep``: client-side parameters, FLOPs, memory, bytes across the cut and
  validation loss for every (cut, rank) pair (the paper's RQ3).

Each training run is its own ``torchrun`` subprocess; finished runs are skipped, so an
interrupted sweep continues where it stopped.
"""
