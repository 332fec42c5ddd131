"""Classification data: CSV reading, the synthetic intent set, encoding and batches, BANKING77."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from runtime.data.classify import (
    CLS_DATA_ENV,
    EncodedText,
    TextExample,
    class_counts,
    collate_texts,
    encode_texts,
    find_classification_dir,
    load_classification,
    load_text_tokenizer,
    pad_token_id,
    synthetic_classification,
    synthetic_vocabulary,
)
from runtime.data.partition import describe_partition, partition

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
REPO = Path(__file__).resolve().parents[1]


def _write(directory: Path, train: str, test: str = "text,label\nhello there,greet\n") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.csv").write_text(train, encoding="utf-8")
    (directory / "test.csv").write_text(test, encoding="utf-8")
    return directory


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    # The developer's own SPLITLORA_CLS_DATA must not change what these tests read.
    monkeypatch.delenv(CLS_DATA_ENV, raising=False)


# ----------------------------------------------------------------------------- CSV reading


def test_csv_with_quotes_commas_and_category_header(tmp_path):
    d = _write(tmp_path / "b77",
               'text,category\n"I ordered a card, but it has not arrived.",card_arrival\n'
               '"She said ""where is it?"" twice",card_arrival\n'
               '"a line\nbreak inside quotes?",card_arrival\n'
               "Can I top up by cheque?,top_up_by_cheque\n\n",
               "text,category\nWhere is my card?,card_arrival\n")
    splits = load_classification(str(d), source="csv")
    assert splits.source == "csv"
    assert splits.train[0] == TextExample("I ordered a card, but it has not arrived.", "card_arrival")
    assert splits.train[1].text == 'She said "where is it?" twice'
    assert len(splits.train) == 4  # the quoted line break stays inside one text; blank line skipped
    assert splits.train[2].text == "a line\nbreak inside quotes?"
    assert splits.train[3] == TextExample("Can I top up by cheque?", "top_up_by_cheque")
    assert splits.labels == ["card_arrival", "top_up_by_cheque"]
    assert splits.test == [TextExample("Where is my card?", "card_arrival")]
    assert "4 train / 1 test, 2 labels" in splits.note and str(d) in splits.note


@pytest.mark.parametrize("header,expected", [
    ("text,label", "greet"),
    ("label,text", "greet"),  # column order does not matter
    ("Text,Category", "greet"),  # nor case
    ("text,intent", "greet"),  # the only other column
    ("id,text,label", "greet"),  # "label" wins over other columns
])
def test_label_column_choice(tmp_path, header, expected):
    cols = [c.strip().lower() for c in header.split(",")]
    row = ",".join({"text": "hi there", "id": "7"}.get(c, "greet") for c in cols)
    d = _write(tmp_path, f"{header}\n{row}\n", f"{header}\n{row}\n")
    splits = load_classification(str(d), "csv")
    assert splits.train == [TextExample("hi there", expected)]


@pytest.mark.parametrize("header", ["sentence,label", "text,intent,domain", "text"])
def test_bad_header_names_the_columns(tmp_path, header):
    d = _write(tmp_path, f"{header}\nx,y,z\n")
    with pytest.raises(ValueError, match="found columns") as info:
        load_classification(str(d), "csv")
    assert str(d / "train.csv") in str(info.value)


@pytest.mark.parametrize("row,what", [(",greet", "empty text"), ("hello,", "empty label"), (" , ", "empty text"),
                                      ("a,b,c", "3 fields")])
def test_bad_row_names_file_and_line(tmp_path, row, what):
    d = _write(tmp_path, f"text,label\nfine,greet\n{row}\n")
    with pytest.raises(ValueError, match=f"train.csv, line 3: {what}"):
        load_classification(str(d), "csv")


def test_test_label_not_in_train(tmp_path):
    d = _write(tmp_path, "text,label\nhi,greet\n", "text,label\nhi,greet\nbye,farewell\nciao,adieu\n")
    with pytest.raises(ValueError, match=r"not in train.csv: \['adieu', 'farewell'\]"):
        load_classification(str(d), "csv")


def test_finding_the_directory(tmp_path, monkeypatch):
    d = _write(tmp_path / "data", "text,label\nhi,greet\n")
    assert find_classification_dir(str(d)) == d
    assert find_classification_dir(str(tmp_path)) is None
    assert find_classification_dir(None) is None
    monkeypatch.setenv(CLS_DATA_ENV, str(d))
    assert find_classification_dir(None) == d
    assert load_classification(None).source == "csv"  # auto picks the CSVs from the variable


def test_missing_data_errors_and_auto_fallback(tmp_path, monkeypatch):
    assert load_classification(None, "auto", seed=3).source == "synthetic"
    with pytest.raises(FileNotFoundError, match=f"--data.dir.*{CLS_DATA_ENV}"):
        load_classification(None, "csv")
    # A directory that was named but lacks the CSVs is an error even for "auto" (a typo).
    with pytest.raises(FileNotFoundError, match="--data.dir=.*does not hold"):
        load_classification(str(tmp_path / "typo"), "auto")
    monkeypatch.setenv(CLS_DATA_ENV, str(tmp_path / "typo"))
    with pytest.raises(FileNotFoundError, match=f"{CLS_DATA_ENV}=.*does not hold"):
        load_classification(None, "auto")
    with pytest.raises(ValueError, match="unknown classification data source"):
        load_classification(None, "e2e")


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_complete():
    a, b, c = synthetic_classification(5), synthetic_classification(5), synthetic_classification(6)
    assert a == b and a.train != c.train
    assert a.source == "synthetic" and a.labels == [f"intent_{i:02d}" for i in range(8)]
    assert (len(a.train), len(a.test)) == (800, 200)
    for split in (a.train, a.test):
        assert set(class_counts(split, a.labels).values()) == {len(split) // 8}  # round-robin: balanced
    vocab = set(synthetic_vocabulary())
    for e in a.train + a.test:
        assert e.text == e.text.lower() and all(w in vocab for w in e.text.split(" "))
        assert 4 <= len(e.text.split(" ")) <= 8


def test_synthetic_keywords_identify_the_class():
    s = synthetic_classification(0, n_classes=77, n_train=770, n_test=77)
    vocab = synthetic_vocabulary()
    assert len(vocab) == len(set(vocab))
    owner: dict[str, set[str]] = {}
    for e in s.train + s.test:
        for w in e.text.split():
            owner.setdefault(w, set()).add(e.label)
    keywords = {w for w, labels in owner.items() if len(labels) == 1}
    assert all(any(w in keywords for w in e.text.split()) for e in s.train)  # each text has one
    with pytest.raises(ValueError, match="n_classes"):
        synthetic_classification(0, n_classes=78)
    with pytest.raises(ValueError, match="every class"):
        synthetic_classification(0, n_classes=8, n_test=5)


# ----------------------------------------------------------------------------- encoding


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    vocab = {w: i for i, w in enumerate([*SPECIALS, *synthetic_vocabulary()])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    # Saved with padding and truncation on: the loader must turn both off.
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=32)
    tok.enable_truncation(max_length=4)
    directory = tmp_path_factory.mktemp("cls_tok")
    tok.save(str(directory / "tokenizer.json"))
    return directory


def test_load_text_tokenizer(tokenizer_dir, tmp_path):
    tok = load_text_tokenizer(tokenizer_dir)
    assert tok.padding is None and tok.truncation is None
    ids = tok.encode("please help me today").ids
    assert len(ids) == 6 and ids[0] == tok.token_to_id("[CLS]") and ids[-1] == tok.token_to_id("[SEP]")
    assert pad_token_id(tok) == 0
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_text_tokenizer(tmp_path)


def test_encode_collate(tokenizer_dir):
    tok = load_text_tokenizer(tokenizer_dir)
    cls_id, sep_id, pad_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]"), pad_token_id(tok)
    labels = ["intent_00", "intent_01", "intent_02"]
    examples = [TextExample("please help", "intent_02"),
                TextExample("i need money today for this card", "intent_00"),
                TextExample("why", "intent_01")]
    enc = encode_texts(examples, tok, labels, max_len=6)
    help_id = tok.token_to_id("help")
    assert enc[0] == EncodedText([cls_id, tok.token_to_id("please"), help_id, sep_id], 2)
    # 7 words + 2 specials = 9 ids > 6: the first 5 and the closing [SEP] are kept.
    assert enc[1].ids == [cls_id, *(tok.token_to_id(w) for w in "i need money today".split()), sep_id]
    assert [e.label for e in enc] == [2, 0, 1]
    assert all(len(e.ids) <= 6 for e in enc)

    batch = collate_texts(enc, pad_id)
    assert batch["input_ids"].shape == (3, 6) and batch["input_ids"].dtype == torch.long
    assert batch["targets"].tolist() == [2, 0, 1] and batch["targets"].dtype == torch.long
    assert batch["loss_mask"].dtype == torch.float32
    assert batch["loss_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6, [1, 1, 1, 0, 0, 0]]
    assert batch["input_ids"][0].tolist() == [*enc[0].ids, pad_id, pad_id]
    assert batch["input_ids"][2, 3:].tolist() == [pad_id] * 3
    assert collate_texts(enc[:1], pad_id)["input_ids"].shape == (1, 4)  # trimmed to the longest item
    assert class_counts(enc, labels) == {"intent_00": 1, "intent_01": 1, "intent_02": 1}
    assert class_counts(examples[:1], labels) == {"intent_00": 0, "intent_01": 0, "intent_02": 1}


def test_encode_errors(tokenizer_dir):
    tok = load_text_tokenizer(tokenizer_dir)
    with pytest.raises(ValueError, match=r"not in the label list: \['nope'\]"):
        encode_texts([TextExample("why", "nope")], tok, ["intent_00"], 8)
    with pytest.raises(ValueError, match="max_len"):
        encode_texts([TextExample("why", "intent_00")], tok, ["intent_00"], 1)
    assert encode_texts([], tok, ["intent_00"], 8) == []
    with pytest.raises(ValueError, match="empty batch"):
        collate_texts([], 0)
    with pytest.raises(ValueError, match="label id 3"):
        class_counts([EncodedText([1, 2], 3)], ["a", "b"])


def test_synthetic_encodes_without_unknown_tokens(tokenizer_dir):
    tok = load_text_tokenizer(tokenizer_dir)
    s = synthetic_classification(1)
    enc = encode_texts(s.train, tok, s.labels, max_len=64)
    unk = tok.token_to_id("[UNK]")
    assert all(unk not in e.ids for e in enc)
    assert class_counts(enc, s.labels) == class_counts(s.train, s.labels)


# ----------------------------------------------------------------------------- BANKING77


def _banking77_dir() -> Path | None:
    for cand in (os.environ.get(CLS_DATA_ENV), REPO.parent / "shared" / "data" / "banking77"):
        if cand and (Path(cand) / "train.csv").is_file() and (Path(cand) / "test.csv").is_file():
            return Path(cand)
    return None


BANKING77 = _banking77_dir()
needs_banking77 = pytest.mark.skipif(
    BANKING77 is None, reason=f"BANKING77 CSVs not found: set {CLS_DATA_ENV} (docs/classification.md)")


@needs_banking77
def test_banking77_loads():
    splits = load_classification(str(BANKING77), "csv")
    assert (len(splits.train), len(splits.test), len(splits.labels)) == (10003, 3080, 77)
    assert "card_arrival" in splits.labels


@needs_banking77
def test_banking77_dirichlet_001_statistics(capsys):
    splits = load_classification(str(BANKING77), "csv")
    parts = partition(splits.train, 30, "dirichlet:0.01", seed=0)
    desc = describe_partition(parts, splits.train)
    n_classes = desc["classes_per_client"]
    with capsys.disabled():
        print(f"\nBANKING77 dirichlet:0.01, 30 clients, seed 0: sizes {desc['size_min']}-{desc['size_max']}, "
              f"classes per client {desc['classes_min']}-{desc['classes_max']} "
              f"(median {statistics.median(n_classes)}); arXiv 2410.22815 reports 50-639 and 2-15")
    assert sorted(i for p in parts for i in p) == list(range(len(splits.train)))
    assert desc["classes_min"] >= 1 and statistics.median(n_classes) <= 15
    assert desc["size_min"] >= 1 and desc["size_max"] <= 1500
