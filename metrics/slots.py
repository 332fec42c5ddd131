"""Copy accuracy of the E2E slots whose value must appear verbatim: ``name`` and ``near``.

Not an official E2E metric: a diagnostic beside them. BLEU rewards the common phrasing of
all attributes; a model that writes a fluent sentence about *another* restaurant ("The
Wrestlers is a pub ..." for ``name[The Mill]``) loses a few n-grams there but is plainly
wrong. The venue names are copied, never paraphrased, in nearly every human reference, so
"does the text contain the MR's ``name`` (``near``) value" measures whether a model reads
its prompt. Matching is by whole words, ignoring case, punctuation and spacing
(``Café Sicilia`` is found in "near café sicilia ."; ``The Mill`` is not found in "Mill pub").

    rates = slot_copy_rates(mrs, hyps)   # {"name": 0.97, "near": 0.88, "n_name": 630, "n_near": 295}
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["COPY_SLOTS", "parse_mr", "slot_copied", "slot_copy_rates"]

COPY_SLOTS = ("name", "near")
_SLOT = re.compile(r"\s*([^,\[\]]+?)\s*\[([^\]]*)\]")


def parse_mr(mr: str) -> dict[str, str]:
    """``"name[The Mill], near[Café Rouge]"`` -> ``{"name": "The Mill", "near": "Café Rouge"}``."""
    return {key: value.strip() for key, value in _SLOT.findall(mr)}


def _words(text: str) -> str:
    return " " + " ".join(re.findall(r"\w+", text.lower())) + " "


def slot_copied(value: str, hyp: str) -> bool:
    """Whether ``value`` occurs in ``hyp`` as whole words (case, punctuation and spacing ignored)."""
    return _words(value) in _words(hyp)


def slot_copy_rates(mrs: Sequence[str], hyps: Sequence[str],
                    slots: Sequence[str] = COPY_SLOTS) -> dict[str, float | int | None]:
    """Per slot: the share of texts that contain their MR's value, over the MRs that have the slot
    (``None`` when none has it), and ``n_<slot>``, how many MRs have it."""
    if len(mrs) != len(hyps):
        raise ValueError(f"{len(hyps)} texts for {len(mrs)} MRs")
    out: dict[str, float | int | None] = {}
    parsed = [parse_mr(m) for m in mrs]
    for slot in slots:
        hits = [slot_copied(p[slot], h) for p, h in zip(parsed, hyps) if p.get(slot)]
        out[slot] = sum(hits) / len(hits) if hits else None
        out[f"n_{slot}"] = len(hits)
    return out
