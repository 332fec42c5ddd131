"""Text classification data: BANKING77-style CSVs, a synthetic intent set, encoding, batches.

Used to check label-skew federated fine-tuning (LoRA-A2, arXiv 2410.22815, evaluates on
BANKING77, arXiv 2003.04807: 10003 train / 3080 test queries, 77 intents).

Data: a directory with ``train.csv`` and ``test.csv``, each with a header, a ``text``
column and one label column (``label``, else ``category``, else the only other column).
It comes from ``--data.dir`` or ``$SPLITLORA_CLS_DATA``; ``source="auto"`` falls back to
:func:`synthetic_classification` when neither is set. A flag or variable that names a
directory without the CSVs is an error even then: a typo must not silently train on
synthetic data.

Tokenisation uses the ``tokenizers`` library alone (no transformers import): a model
directory's ``tokenizer.json``, whose post-processor adds the special tokens
(``[CLS] ... [SEP]`` or ``<s> ... </s>``). A batch is::

    input_ids (B, T) long     right-padded with the tokenizer's pad id
    targets   (B,)   long     label ids (index into the sorted train labels)
    loss_mask (B, T) float32  1 on real tokens, 0 on padding

``loss_mask`` is the attention and pooling mask; it keeps that name because the runtime
counts a batch's tokens with that key.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tokenizers
import torch

CLS_DATA_ENV = "SPLITLORA_CLS_DATA"
FLAG = "--data.dir"
SPLIT_FILES = ("train.csv", "test.csv")
SOURCES = ("auto", "csv", "synthetic")
TEXT_COLUMN = "text"
LABEL_COLUMNS = ("label", "category")  # preferred label column names, in order
PAD_TOKENS = ("[PAD]", "<pad>")  # BERT-style, RoBERTa-style


@dataclass(frozen=True)
class TextExample:
    text: str
    label: str


@dataclass(frozen=True)
class ClassSplits:
    train: list[TextExample]
    test: list[TextExample]
    labels: list[str]  # sorted unique train labels; a label's id is its index
    source: str  # "csv" | "synthetic"
    note: str  # one line for the run log


# ---------------------------------------------------------------------------------------
# Reading CSVs


def find_classification_dir(data_dir: str | None) -> Path | None:
    """``data_dir`` (else ``$SPLITLORA_CLS_DATA``) if it holds train.csv and test.csv; else None."""
    chosen = data_dir if data_dir else os.environ.get(CLS_DATA_ENV)
    if not chosen:
        return None
    root = Path(chosen).expanduser()
    return root if all((root / name).is_file() for name in SPLIT_FILES) else None


def _label_column(header: list[str], path: Path) -> int:
    if TEXT_COLUMN not in header:
        raise ValueError(f"{path}: no {TEXT_COLUMN!r} column; found columns {header}")
    for name in LABEL_COLUMNS:
        if name in header:
            return header.index(name)
    others = [i for i, name in enumerate(header) if name != TEXT_COLUMN]
    if len(others) == 1:
        return others[0]
    raise ValueError(f"{path}: cannot tell the label column: expected {TEXT_COLUMN!r} plus one of "
                     f"{list(LABEL_COLUMNS)} or exactly one other column; found columns {header}")


def read_classification_csv(path: str | Path) -> list[TextExample]:
    """The (text, label) rows of one CSV; ``ValueError`` naming the file and line for a bad
    header, a row with the wrong number of fields, or an empty text or label. Blank lines
    are skipped."""
    path = Path(path)
    # newline="": quoted texts may hold commas, quotes and line breaks; utf-8-sig drops a BOM.
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = [name.strip().lower() for name in next(reader)]
        except StopIteration:
            raise ValueError(f"{path}: empty file (expected a header row)") from None
        l_col = _label_column(header, path)  # checks the text column too
        t_col = header.index(TEXT_COLUMN)
        examples = []
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}, line {reader.line_num}: {len(row)} fields, header has {len(header)}")
            text, label = row[t_col].strip(), row[l_col].strip()
            if not text or not label:
                raise ValueError(f"{path}, line {reader.line_num}: empty {'text' if not text else 'label'}")
            examples.append(TextExample(text, label))
    if not examples:
        raise ValueError(f"{path}: no rows after the header")
    return examples


def _not_found(problem: str) -> FileNotFoundError:
    return FileNotFoundError(f"{problem}. Expected {' and '.join(SPLIT_FILES)} in a directory given by "
                             f"{FLAG} DIR or by the environment variable {CLS_DATA_ENV}")


def load_classification(data_dir: str | None, source: str = "auto", seed: int = 0) -> ClassSplits:
    """The train/test splits: ``"csv"`` (``FileNotFoundError`` when not found),
    ``"synthetic"``, or ``"auto"`` (CSVs when a directory is given, else synthetic).

    ``seed`` only seeds the synthetic data. Test labels absent from train are a
    ``ValueError`` (the classifier has no output for them).
    """
    if source not in SOURCES:
        raise ValueError(f"unknown classification data source {source!r}; expected one of {SOURCES}")
    if source == "synthetic":
        return synthetic_classification(seed)
    found = find_classification_dir(data_dir)
    if found is None:
        given = data_dir or os.environ.get(CLS_DATA_ENV)
        if given:
            origin = f"{FLAG}={data_dir}" if data_dir else f"{CLS_DATA_ENV}={given}"
            raise _not_found(f"{origin} does not hold the classification CSVs")
        if source == "csv":
            raise _not_found(f"no classification data found ({FLAG} and {CLS_DATA_ENV} unset)")
        return synthetic_classification(seed)
    train, test = (read_classification_csv(found / name) for name in SPLIT_FILES)
    labels = sorted({e.label for e in train})
    unseen = sorted({e.label for e in test} - set(labels))
    if unseen:
        raise ValueError(f"{found / SPLIT_FILES[1]}: labels not in {SPLIT_FILES[0]}: {unseen}")
    note = f"BANKING77-style CSV from {found}: {len(train)} train / {len(test)} test, {len(labels)} labels"
    return ClassSplits(train, test, labels, "csv", note)


# ---------------------------------------------------------------------------------------
# Synthetic intents

# Words every class uses; none has the consonant-vowel-consonant-vowel shape of the
# class keywords below, so the two sets are disjoint (tested).
FILLER_WORDS = ("please", "i", "my", "the", "can", "you", "help", "with", "need", "want", "to", "a",
                "is", "it", "how", "do", "what", "card", "account", "money", "today", "still",
                "why", "again", "this", "for", "me", "there", "an", "issue")
KEYWORDS_PER_CLASS = 3
MAX_SYNTHETIC_CLASSES = 77  # as many intents as BANKING77
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]  # 70 syllables


def _keyword(i: int) -> str:
    # Two-syllable pseudo-words; 37 is coprime to 70 * 70, so i -> word is injective.
    j = (i * 37) % (len(_SYLLABLES) ** 2)
    return _SYLLABLES[j // len(_SYLLABLES)] + _SYLLABLES[j % len(_SYLLABLES)]


def _class_keywords(c: int) -> list[str]:
    return [_keyword(c * KEYWORDS_PER_CLASS + s) for s in range(KEYWORDS_PER_CLASS)]


def synthetic_vocabulary() -> list[str]:
    """Every word a synthetic text can contain (fillers, then class keywords)."""
    return [*FILLER_WORDS, *(w for c in range(MAX_SYNTHETIC_CLASSES) for w in _class_keywords(c))]


def _synthetic_split(rng: np.random.Generator, n: int, n_classes: int) -> list[TextExample]:
    # Round-robin labels (every class present when n >= n_classes), then shuffled.
    labels = rng.permutation(np.arange(n) % n_classes)
    out = []
    for c in labels:
        words = list(rng.choice(FILLER_WORDS, size=int(rng.integers(3, 7))))
        words += list(rng.choice(_class_keywords(int(c)), size=int(rng.integers(1, 3)), replace=False))
        rng.shuffle(words)
        out.append(TextExample(" ".join(words), f"intent_{int(c):02d}"))
    return out


def synthetic_classification(seed: int, n_classes: int = 8, n_train: int = 800, n_test: int = 200) -> ClassSplits:
    """An intent-like dataset a tiny random encoder learns in seconds: a text is 3-6
    shared filler words plus 1-2 of its class's own 3 keywords, shuffled, lowercase.
    Deterministic in ``seed``; labels ``intent_00`` ... ; every class in both splits."""
    if not 2 <= n_classes <= MAX_SYNTHETIC_CLASSES:
        raise ValueError(f"n_classes must be in [2, {MAX_SYNTHETIC_CLASSES}], got {n_classes}")
    if min(n_train, n_test) < n_classes:
        raise ValueError(f"n_train={n_train} and n_test={n_test} must each be >= n_classes={n_classes} "
                         "(every class appears in both splits)")
    rng = np.random.default_rng(seed)
    train = _synthetic_split(rng, n_train, n_classes)
    test = _synthetic_split(rng, n_test, n_classes)
    labels = [f"intent_{c:02d}" for c in range(n_classes)]
    note = f"synthetic intents (seed {seed}): {n_train} train / {n_test} test, {n_classes} labels"
    return ClassSplits(train, test, labels, "synthetic", note)


# ---------------------------------------------------------------------------------------
# Tokenising and batching


@dataclass(frozen=True)
class EncodedText:
    ids: list[int]  # token ids including the tokenizer's special tokens
    label: int  # index into ClassSplits.labels


def load_text_tokenizer(model_dir: str | Path) -> tokenizers.Tokenizer:
    """``model_dir/tokenizer.json`` with its padding and truncation turned off (batches are
    padded per batch by :func:`collate_texts`; :func:`encode_texts` truncates)."""
    path = Path(model_dir).expanduser() / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer.json in {Path(model_dir).expanduser()} (needed to tokenise texts)")
    tok = tokenizers.Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.no_truncation()
    return tok


def pad_token_id(tokenizer: tokenizers.Tokenizer) -> int:
    """The id of ``[PAD]`` or ``<pad>``; ``ValueError`` if the vocabulary has neither."""
    for token in PAD_TOKENS:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return int(token_id)
    raise ValueError(f"the tokenizer has none of the pad tokens {PAD_TOKENS}")


def encode_texts(examples: Sequence[TextExample], tokenizer: tokenizers.Tokenizer, labels: Sequence[str],
                 max_len: int) -> list[EncodedText]:
    """Encode in one batched call. An example longer than ``max_len`` keeps its first
    ``max_len - 1`` ids and its last one (the closing special token)."""
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2 (room for the opening and closing tokens), got {max_len}")
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({e.label for e in examples} - index.keys())
    if unknown:
        raise ValueError(f"labels not in the label list: {unknown}")
    if not examples:
        return []
    out = []
    for e, enc in zip(examples, tokenizer.encode_batch([e.text for e in examples])):
        ids = list(enc.ids)
        if len(ids) > max_len:
            ids = ids[: max_len - 1] + ids[-1:]
        out.append(EncodedText(ids, index[e.label]))
    return out


def collate_texts(items: Sequence[EncodedText], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the batch's longest item: ``input_ids`` (B, T), ``targets`` (B,),
    ``loss_mask`` (B, T) float32 (1 on real tokens)."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    B, T = len(items), max(len(it.ids) for it in items)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    loss_mask = torch.zeros((B, T), dtype=torch.float32)
    for b, it in enumerate(items):
        input_ids[b, : len(it.ids)] = torch.as_tensor(it.ids, dtype=torch.long)
        loss_mask[b, : len(it.ids)] = 1.0
    targets = torch.tensor([it.label for it in items], dtype=torch.long)
    return {"input_ids": input_ids, "targets": targets, "loss_mask": loss_mask}


def class_counts(examples: Sequence[EncodedText] | Sequence[TextExample], labels: Sequence[str]) -> dict[str, int]:
    """Examples per label, every label of ``labels`` listed (zeros included), in its order."""
    counts = dict.fromkeys(labels, 0)
    for e in examples:
        if isinstance(e.label, int):  # an EncodedText's label id
            if not 0 <= e.label < len(labels):
                raise ValueError(f"label id {e.label} outside [0, {len(labels)})")
            name = labels[e.label]
        else:
            name = e.label
        if name not in counts:
            raise ValueError(f"label {e.label!r} not in the label list")
        counts[name] += 1
    return counts
