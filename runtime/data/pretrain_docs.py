"""Pretraining documents made from the references of the training split alone (never MRs,
never dev/test text for training).

A base trained only as a language model on the references writes fluent restaurant text
but has never had to read its prompt: LoRA on it then learns one description for every MR
(the probe in the issue that introduced this module: BLEU 0.22). So besides plain text,
the pretraining mix teaches the base to copy from a prompt, with two in-domain tasks that
are not the MR -> reference pairing:

- ``plain``:   ``[50256] ref [50256]`` - language modelling;
- ``copy``:    ``ref [50256] ref [50256]`` - repeat the prompt;
- ``keywords``: ``span | span | ... [50256] ref [50256]`` - the reference's content-word
  spans (e.g. "The Eagle", "coffee shop", "city centre"), a random subset of them in a
  random order, then the whole reference: find the spans in the prompt and write a
  sentence that uses them.

Each document is an item with ``.context`` and ``.completion``, so the fine-tuning encoder
applies unchanged (the loss covers the completion and its final 50256).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PretrainDoc", "KINDS", "keyword_spans", "make_docs"]

KINDS = ("plain", "copy", "keywords")
MIX = (0.2, 0.2, 0.6)  # share of each kind in KINDS order

# Function words and punctuation end a content span (the references are space-tokenised).
_STOP = set("""a an the and or but is are was were be been it its it's this that these those there here
of in on at to for with by from near next as than then also has have had which who whose where while
located serves serving offers offering called named you your they their them we our can if not no
so very more most less only just , . ; : ! ? - ' " ( ) & / with""".split())


@dataclass(frozen=True)
class PretrainDoc:
    context: str
    completion: str
    kind: str


def keyword_spans(text: str) -> list[str]:
    """Maximal runs of content words of a space-tokenised text, in order."""
    spans, cur = [], []
    for word in text.split():
        if word.lower() in _STOP:
            if cur:
                spans.append(" ".join(cur))
                cur = []
        else:
            cur.append(word)
    if cur:
        spans.append(" ".join(cur))
    return spans


def _keywords_prompt(ref: str, rng: random.Random) -> str:
    spans = keyword_spans(ref)
    kept = [s for s in spans if rng.random() < 0.8] or spans[:1]
    rng.shuffle(kept)
    return " | ".join(kept)


def make_docs(references: Sequence[str], seed: int) -> list[PretrainDoc]:
    """One document per distinct reference, its kind drawn with ``MIX``; seeded, order kept."""
    rng = random.Random(seed)
    docs = []
    for ref in dict.fromkeys(r.strip() for r in references if r.strip()):
        kind = rng.choices(KINDS, weights=MIX)[0]
        if kind == "plain":
            docs.append(PretrainDoc("", ref, kind))
        elif kind == "copy":
            docs.append(PretrainDoc(ref, ref, kind))
        else:
            docs.append(PretrainDoc(_keywords_prompt(ref, rng), ref, kind))
    return docs
