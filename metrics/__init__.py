"""E2E NLG metrics as the official scorer computes them. Stands alone (no torch).

``from metrics import evaluate`` -- see ``metrics.e2e`` (entry point, file input),
``metrics.mteval`` (BLEU, NIST), ``metrics.coco`` (METEOR, ROUGE_L, CIDEr) and
``metrics.ptb`` (the tokenisation the COCO scorers see).
"""

from typing import Any

__all__ = ["E2EScorer", "InputError", "evaluate", "read_context_completion", "read_hyps", "read_refs"]


def __getattr__(name: str) -> Any:
    # Lazy, so ``python -m metrics.e2e`` does not import metrics.e2e twice (runpy warns).
    if name in __all__:
        from metrics import e2e

        return getattr(e2e, name)
    raise AttributeError(f"module 'metrics' has no attribute {name!r}")
