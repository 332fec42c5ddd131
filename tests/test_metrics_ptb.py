"""The Python PTB tokenisation (metrics.ptb) against the Stanford jar the official scorer uses."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest

from metrics.ptb import coco_tokenize, coco_tokenize_java, ptb_tokenize


def _e2e_dir() -> Path | None:
    env = os.environ.get("SPLITLORA_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared/data/e2e"
    return root if (root / "golden" / "test.refs.txt").is_file() else None


E2E = _e2e_dir()
needs_data = pytest.mark.skipif(E2E is None, reason="E2E data not found : set SPLITLORA_DATA (docs/data.md)")
needs_java = pytest.mark.skipif(
    shutil.which("java") is None, reason="java not on PATH (needed to run the real tokenizer)"
)


# Expected outputs below were produced by the CoreNLP 3.4.1 jar (coco_tokenize_java).
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Blue Spice is a coffee shop in the city centre.", "the blue spice is a coffee shop in the city centre"),
        ("It's £20-25, isn't it?", "it 's # 20-25 is n't it"),
        ("near St. John's College", "near st. john 's college"),
        ("in the city center., near All Bar One", "in the city center. near all bar one"),
        (
            "A family - friendly pub (cheap) called 'The Mill'",
            "a family friendly pub -lrb- cheap -rrb- called the mill",
        ),
        ("You cannot bring kids, can't you?", "you can not bring kids ca n't you"),
        ("Prices are £ 20 - 25 .", "prices are # 20 25"),
        ("rated 5 out of 5 , etc. Nice", "rated 5 out of 5 etc. nice"),
        ("e.g.offers a.m. U.S. 3/5 20.5", "e.g.offers a.m. u.s. 3/5 20.5"),
    ],
)
def test_known_tokenisations(text: str, expected: str) -> None:
    assert coco_tokenize([text]) == [expected]


def test_initial_before_a_sentence_starter_on_the_next_line() -> None:
    # The jar lexes all texts as one file: "L." loses its period when the next line
    # starts with "The" (a sentence starter) but not before "Near".
    assert coco_tokenize(["for 20-25 L.", "The Mill"]) == ["for 20-25 l", "the mill"]
    assert coco_tokenize(["for 20-25 L.", "Near it"]) == ["for 20-25 l.", "near it"]


def test_ptb_tokenize_keeps_punctuation() -> None:
    assert ptb_tokenize('He said "hi".') == ["he", "said", "``", "hi", "''", "."]


def test_empty_text_gives_empty_string() -> None:
    assert coco_tokenize(["", "a"]) == ["", "a"]


def _compare_with_java(texts: list[str]) -> None:
    ours = coco_tokenize(texts)
    theirs = coco_tokenize_java(texts)
    diffs = [(t, o, j) for t, o, j in zip(texts, ours, theirs) if o != j]
    assert len(theirs) == len(texts)
    assert not diffs, f"{len(diffs)} of {len(texts)} differ, e.g. {diffs[:3]}"


@needs_java
def test_tricky_cases_match_the_jar() -> None:
    _compare_with_java(
        [
            "He said (hello) [there] {you} \"quoted\" 'single' `back` end.",
            "food,low-priced river,there a,b-c 1,000 1,000-2 french,family friendly,low-cost,nice",
            "Price €20 and $20 and £20 and 20¢ and 20%",
            "Mr. Smith and Dr. Who at St. John's Rd. Ave. etc. Inc. Co. vs. Jan. U.S. a.m. e.g. i.e.",
            "It is rated a. It is option B. the L. the rd. then No. 5 or no. then",
            "A&W AT&T fish & chips 3/5 and/or &amp; 5-10 --- -- ... .. !! ?!",
            "He's isn't can't won't gonna cannot y'all 'tis o'clock d'oeuvres I'm we've they'd you'll x",
            "center.,x center.;x center.!x etc.a high Rd.in the e.g.offers L.given",
            "www.x.com test@ex.com #hash @at 20:30 1:2 5*3 a+b c++ :) <b>bold</b> x<y x>y",
            "Café's kids' James' it's' ain't J'adore ’Spice",
            "the blue spice is a coffee shop in the city centre . it 's family - friendly and costs £ 20 - 25 .",
        ]
    )


@needs_java
@needs_data
def test_e2e_test_set_matches_the_jar() -> None:
    """Golden hypotheses, official references and the space-tokenised references, as the scorer sees them."""
    golden = E2E / "golden"
    for name in ("test.refs.txt", "test.tgen.hyps.txt", "test.template.hyps.txt"):
        lines = [line.strip() for line in (golden / name).read_text(encoding="utf-8").splitlines()]
        _compare_with_java([line for line in lines if line])
    tokenised = E2E / "lora-e2e" / "test.txt"
    if tokenised.is_file():
        lines = tokenised.read_text(encoding="utf-8").splitlines()
        _compare_with_java([line.partition("||")[2].strip() for line in lines if "||" in line])


@needs_java
@needs_data
def test_all_e2e_references_match_the_jar() -> None:
    """Every reference of train/dev/test (51,426 sentences; ~15 s)."""
    texts: list[str] = []
    for name in ("trainset.csv", "devset.csv", "testset_w_refs.csv"):
        path = E2E / "e2e-dataset" / name
        if not path.is_file():
            pytest.skip(f"{path} missing")
        with path.open(encoding="utf-8", newline="") as fh:
            texts += [row["ref"] for row in csv.DictReader(fh)]
    _compare_with_java(texts)
