"""BLEU and NIST (metrics.mteval) on tiny hand-made cases whose values are derived by hand."""

from __future__ import annotations

import math

import pytest

from metrics.mteval import MtevalAccumulator, corpus_bleu, corpus_mteval, corpus_nist, mteval_tokenize

BETA = -math.log(0.5) / math.log(1.5) ** 2  # mteval's NIST length-penalty constant, ~4.216


# ---------------------------------------------------------------- tokenisation


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        # symbols split, case folded, final period split (preceded by a non-digit)
        ("The Eagle, near Café.", ["the", "eagle", ",", "near", "café", "."]),
        # hyphen kept between letters, split after a digit; "£" is not ASCII, stays glued
        ("family-friendly £20-25", ["family-friendly", "£20", "-", "25"]),
        # period and comma stay inside numbers; apostrophes are never split
        ("it's 20.5 or 1,000", ["it's", "20.5", "or", "1,000"]),
        # SGML entities decoded first, then split like the characters they stand for
        ("fish &amp; chips &quot;x&quot;", ["fish", "&", "chips", '"', "x", '"']),
        # the official port's empty text is one empty token
        ("", [""]),
    ],
)
def test_mteval_tokenize(text: str, tokens: list[str]) -> None:
    assert mteval_tokenize(text) == tokens


# ---------------------------------------------------------------- BLEU


def test_bleu_perfect_match_is_one() -> None:
    assert corpus_bleu([["the cat sat on the mat"]], ["the cat sat on the mat"]) == pytest.approx(1.0)


def test_bleu_precisions_geometric_mean() -> None:
    # hyp "a b c d e" vs ref "a b c d f":
    #   1-grams 4/5 (e misses), 2-grams 3/4 (d e misses), 3-grams 2/3, 4-grams 1/2
    #   equal lengths -> brevity penalty exp(1 - 5/5) = 1
    #   BLEU = (4/5 * 3/4 * 2/3 * 1/2) ** (1/4) = 0.2 ** 0.25
    assert corpus_bleu([["a b c d f"]], ["a b c d e"]) == pytest.approx(0.2**0.25)


def test_bleu_clips_to_the_max_count_in_one_reference() -> None:
    # hyp "the the the the" (4 tokens), refs "the cat" / "the the cat":
    #   "the" occurs 4 times, at most 2 times in one ref (ref 2)  -> 1-grams 2/4
    #   "the the" 3 times, at most once in one ref                -> 2-grams 1/3
    #   3-grams 0/2 and 4-grams 0/1: zero hits are floored to 1e-15
    #   closest ref length to 4 is 3 (ref 2) -> 4 > 3, no brevity penalty
    expected = (2 / 4 * 1 / 3 * 1e-15 / 2 * 1e-15 / 1) ** 0.25
    assert corpus_bleu([["the cat", "the the cat"]], ["the the the the"]) == pytest.approx(expected)


def test_bleu_brevity_penalty() -> None:
    # hyp "a b c d" (4), one ref "a b c d e f g h" (8): all precisions 1,
    # BP = exp(1 - 8/4) = exp(-1)
    assert corpus_bleu([["a b c d e f g h"]], ["a b c d"]) == pytest.approx(math.exp(-1))


def test_bleu_closest_reference_ties_go_to_the_shorter() -> None:
    # hyp "a b c d" (4); refs of length 6 and 2 are both 2 away -> the shorter (2) is used,
    # 4 > 2 so no penalty; all n-grams are in ref 1 -> BLEU 1. Taking the longer (6) would
    # give exp(1 - 6/4) = 0.607.
    assert corpus_bleu([["a b c d e f", "a b"]], ["a b c d"]) == pytest.approx(1.0)


def test_bleu_sums_statistics_over_the_corpus() -> None:
    # seg 1: "a b c d" = ref -> hits 4/4, 3/3, 2/2, 1/1
    # seg 2: "a b c d e" vs "a b c d f" -> 4/5, 3/4, 2/3, 1/2
    # corpus: 8/9, 6/7, 4/5, 2/3 (not a mean of sentence scores); lengths 9 = 9 -> BP 1
    expected = (8 / 9 * 6 / 7 * 4 / 5 * 2 / 3) ** 0.25
    assert corpus_bleu([["a b c d"], ["a b c d f"]], ["a b c d", "a b c d e"]) == pytest.approx(expected)


def test_bleu_is_case_insensitive_and_tokenised() -> None:
    assert corpus_bleu([["the eagle , near Café ."]], ["The Eagle, near café."]) == pytest.approx(1.0)


def test_bleu_agrees_with_sacrebleu_on_ordinary_text() -> None:
    sacrebleu = pytest.importorskip("sacrebleu")
    refs = [
        ["The Eagle is a cheap coffee shop near Burger King.", "Near Burger King is The Eagle, a cheap coffee shop."],
        ["Zizzi is a family-friendly pub in the city centre.", "In the city centre there is a pub called Zizzi."],
        ["Blue Spice serves French food for £20-25.", "For £20-25 you can eat French food at Blue Spice."],
    ]
    hyps = [
        "The Eagle is a coffee shop near Burger King with cheap prices.",
        "Zizzi is a pub in the city centre which is family-friendly.",
        "Blue Spice serves French food in the £20-25 price range.",
    ]
    streams = [[group[i] for group in refs] for i in range(2)]
    ours = corpus_bleu(refs, hyps)
    assert ours == pytest.approx(sacrebleu.corpus_bleu(hyps, streams, lowercase=True, tokenize="13a").score / 100)


# ---------------------------------------------------------------- NIST


def test_nist_information_weights_single_segment() -> None:
    # refs "a b", "a c": 4 reference words; counts a:2 b:1 c:1, (a b):1 (a c):1
    #   info(a) = log2(4/2) = 1, info(b) = log2(4/1) = 2, info(a b) = log2(count(a)/count(a b)) = 1
    # hyp "a b": hits a, b, (a b); n-gram totals 2 (1-grams) and 1 (2-grams)
    #   NIST = (1 + 2)/2 + 1/1 = 2.5; hyp length 2 = average ref length 2 -> no penalty
    acc = MtevalAccumulator()
    acc.append("a b", ["a b", "a c"])
    assert acc.info(("a",)) == pytest.approx(1.0)
    assert acc.info(("b",)) == pytest.approx(2.0)
    assert acc.info(("a", "b")) == pytest.approx(1.0)
    assert acc.nist() == pytest.approx(2.5)


def test_nist_weights_come_from_all_references_of_the_set() -> None:
    # seg 1: hyp "x y", refs ["x y"]; seg 2: hyp "x z", refs ["x z", "x z"]
    # all refs together: 6 words; x:3 y:1 z:2; (x y):1 (x z):2
    #   info(x) = log2(6/3) = 1, info(y) = log2 6, info(z) = log2 3,
    #   info(x y) = log2(3/1), info(x z) = log2(3/2)
    # 1-gram hits x,y + x,z over 4 hyp 1-grams; 2-gram hits (x y) + (x z) over 2
    # hyp length 4 = sum of average ref lengths 2 + 2 -> no penalty
    expected = (1 + math.log2(6) + 1 + math.log2(3)) / 4 + (math.log2(3) + math.log2(1.5)) / 2
    assert corpus_nist([["x y"], ["x z", "x z"]], ["x y", "x z"]) == pytest.approx(expected)
    # per-segment weights (what NLTK does) would give a different number
    assert corpus_nist([["x y"]], ["x y"]) + corpus_nist([["x z", "x z"]], ["x z"]) != pytest.approx(expected)


def test_nist_length_penalty_is_half_at_two_thirds() -> None:
    # ref "a b c": 3 words, info(a) = info(b) = log2 3, info(a b) = log2(1/1) = 0
    # hyp "a b": 1-grams (log2 3 + log2 3)/2 = log2 3; 2-grams 0/1
    # ratio 2/3 -> penalty exp(-BETA * ln(2/3)^2) = 0.5 by the definition of BETA
    assert corpus_nist([["a b c"]], ["a b"]) == pytest.approx(0.5 * math.log2(3))


def test_nist_length_penalty_short_hypothesis() -> None:
    # ref "a b c", hyp "a": info(a) = log2 3 over 1 hyp 1-gram; ratio 1/3
    expected = math.log2(3) * math.exp(-BETA * math.log(1 / 3) ** 2)
    assert corpus_nist([["a b c"]], ["a"]) == pytest.approx(expected)


def test_accumulator_reset_and_token_lists() -> None:
    acc = MtevalAccumulator()
    acc.append("a b c d e", ["a b c d f"])
    acc.reset()
    acc.append(["a", "b", "c", "d", "e"], [["a", "b", "c", "d", "f"]])  # pre-tokenised input is used as is
    assert acc.bleu() == pytest.approx(0.2**0.25)
    assert acc.score() == corpus_mteval([["a b c d f"]], ["a b c d e"])


def test_count_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="2 hypotheses but 1 reference groups"):
        corpus_bleu([["a"]], ["a", "b"])
