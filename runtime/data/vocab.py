"""A compact vocabulary: an ordered subset of GPT-2 BPE ids, and one id for all others.

A small model does not need GPT-2's 50,257-row embedding and LM head: the E2E data use
about 3.2k distinct BPE ids, and on a CPU-sized model the full head would be most of the
compute. A :class:`VocabMap` gives model id ``i`` to GPT-2 id ``gpt2_ids[i]``; every GPT-2
id outside the subset maps to the one unknown id ``unk_id = len(gpt2_ids)``, so the model's
vocabulary has ``len(gpt2_ids) + 1`` rows. The stop ids 50256 (<|endoftext|>) and 628
("\\n\\n") are always in the subset.

The map sits at the text boundary only: encoding maps BPE ids into model ids, decoding
maps them back (the unknown id decodes to nothing). The model, the loss, the split, every
aggregation strategy and beam search see plain ids in ``[0, size)`` and do not change.
The map is saved beside the model as ``vocab_map.json``; a model directory without one
uses the full GPT-2 vocabulary.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from runtime.data.tokenizer import EOS_ID, VOCAB_SIZE

__all__ = ["VocabMap", "STOP_IDS", "VOCAB_FILE", "load_vocab_map"]

STOP_IDS = (EOS_ID, 628)  # <|endoftext|> and "\n\n": the recipe's stop tokens
VOCAB_FILE = "vocab_map.json"
FORMAT = "splitlora-vocab-map/1"


class VocabMap:
    """Model id <-> GPT-2 id; model ids ``0..len(gpt2_ids)-1`` in the given order, then unknown."""

    def __init__(self, gpt2_ids: Sequence[int]) -> None:
        ids = [int(i) for i in gpt2_ids]
        if len(set(ids)) != len(ids):
            raise ValueError("vocabulary map: GPT-2 ids must be distinct")
        bad = [i for i in ids if not 0 <= i < VOCAB_SIZE]
        if bad:
            raise ValueError(f"vocabulary map: ids outside [0, {VOCAB_SIZE}): {bad[:5]}")
        missing = [s for s in STOP_IDS if s not in ids]
        if missing:
            raise ValueError(f"vocabulary map must hold the stop ids {STOP_IDS}; missing {missing}")
        self.gpt2_ids = ids
        self.unk_id = len(ids)
        self._to_model = np.full(VOCAB_SIZE, self.unk_id, dtype=np.int64)  # (50257,) GPT-2 id -> model id
        self._to_model[np.asarray(ids, dtype=np.int64)] = np.arange(len(ids))

    @property
    def size(self) -> int:
        """Rows of the model's embedding and LM head (the subset + the unknown id)."""
        return len(self.gpt2_ids) + 1

    @property
    def eos_id(self) -> int:
        return int(self._to_model[EOS_ID])

    def to_model(self, gpt2_ids: Iterable[int]) -> list[int]:
        """GPT-2 ids -> model ids (ids outside the subset -> ``unk_id``)."""
        return self._to_model[np.fromiter(gpt2_ids, dtype=np.int64)].tolist()

    def to_gpt2(self, model_ids: Iterable[int]) -> list[int]:
        """Model ids -> GPT-2 ids; the unknown id is dropped (it has no text)."""
        return [self.gpt2_ids[i] for i in model_ids if 0 <= i < self.unk_id]

    def coverage(self, gpt2_ids: Iterable[int]) -> float:
        """Fraction of ``gpt2_ids`` inside the subset."""
        arr = np.fromiter(gpt2_ids, dtype=np.int64)
        return float((self._to_model[arr] != self.unk_id).mean()) if arr.size else 1.0

    @classmethod
    def from_corpus(cls, token_lists: Iterable[Sequence[int]], min_count: int = 1) -> VocabMap:
        """Every GPT-2 id seen at least ``min_count`` times, in ascending id order, plus the stop ids."""
        counts: Counter[int] = Counter()
        for ids in token_lists:
            counts.update(ids)
        keep = {i for i, c in counts.items() if c >= min_count} | set(STOP_IDS)
        return cls(sorted(keep))

    def to_json(self) -> dict:
        return {"format": FORMAT, "base_vocabulary": "gpt2", "size": self.size, "unk_id": self.unk_id,
                "gpt2_ids": self.gpt2_ids}

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / VOCAB_FILE
        path.write_text(json.dumps(self.to_json()) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> VocabMap:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a vocabulary map (format {data.get('format')!r}, expected {FORMAT!r})")
        vm = cls(data["gpt2_ids"])
        if vm.size != data.get("size", vm.size):
            raise ValueError(f"{path}: size {data['size']} does not match its {len(vm.gpt2_ids)} ids + unknown")
        return vm

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VocabMap) and self.gpt2_ids == other.gpt2_ids

    def __repr__(self) -> str:
        return f"VocabMap(size={self.size}, unk_id={self.unk_id})"


def load_vocab_map(model_dir: str | Path | None) -> VocabMap | None:
    """The map saved in ``model_dir``, or None (full GPT-2 vocabulary, or no directory)."""
    if not model_dir:
        return None
    path = Path(model_dir) / VOCAB_FILE
    return VocabMap.load(path) if path.is_file() else None
