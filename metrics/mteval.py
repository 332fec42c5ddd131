"""BLEU and NIST as the official E2E scorer computes them with ``-p``.

That mode is a Python port of NIST's ``mteval-v13a.pl``: mteval's normalisation
and tokenisation, case-insensitive matching, several references per segment,
statistics summed over the whole corpus.

- BLEU-4: clipped n-gram precisions (each n-gram's count clipped to its highest
  count in any one reference), geometric mean, brevity penalty against the sum
  of the reference lengths closest to each hypothesis (ties: the shorter one).
- NIST-5: information weights ``log2(count(w1..wn-1) / count(w1..wn))`` counted
  over *all* references of the evaluated set (every reference counts; the
  0-gram count is the total number of reference words); hits are the clipped
  matches against all references of the segment; length penalty against the
  summed *average* reference length.

Quirks of the official port kept on purpose, so numbers match it:
- the n-gram total of a segment is ``len(hyp) - n + 1`` even when negative
  (hypotheses shorter than n tokens lower the total);
- an empty hypothesis tokenises to one empty token (length 1);
- zero hits / totals are floored (1e-15 / 1e-9) so BLEU is never undefined.
sacrebleu (``tokenize="13a", lowercase=True``) agrees with this BLEU whenever
every hypothesis has at least 4 tokens and every order has a hit; the tests
check that on the golden outputs.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

__all__ = ["MtevalAccumulator", "corpus_bleu", "corpus_mteval", "corpus_nist", "mteval_tokenize"]

# mteval-v13a's punctuation class: every ASCII symbol except , . - ' which get the
# context-dependent rules below (space is in the class too; harmless).
_SYMBOLS = re.compile("([" + re.escape('{|}~[\\]^_` !"#$%&()*+:;<=>?@/') + "])")
_PERIOD_COMMA_AFTER_NONDIGIT = re.compile(r"([^0-9])([.,])")
_PERIOD_COMMA_BEFORE_NONDIGIT = re.compile(r"([.,])([^0-9])")
_DASH_AFTER_DIGIT = re.compile(r"([0-9])(-)")
_SPACES = re.compile(r"\s+")
_ENTITIES = (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"))

Ngram = tuple[str, ...]


def mteval_tokenize(text: str) -> list[str]:
    """Normalise and tokenise like mteval-v13a (the ``-p`` port), lowercased.

    Symbols are split off; "." and "," only when not between digits (so "20.5"
    and "1,000" stay whole); "-" only after a digit ("20-25" -> "20 - 25", but
    "family-friendly" stays whole). Apostrophes are never split.
    """
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    for entity, char in _ENTITIES:
        text = text.replace(entity, char)
    text = _SYMBOLS.sub(r" \1 ", f" {text} ")
    text = _PERIOD_COMMA_AFTER_NONDIGIT.sub(r"\1 \2 ", text)
    text = _PERIOD_COMMA_BEFORE_NONDIGIT.sub(r" \1 \2", text)
    text = _DASH_AFTER_DIGIT.sub(r"\1 \2 ", text)
    # split(" ") rather than split(): an empty text gives [""], one (empty) token,
    # exactly as the official port does.
    return [tok.lower() for tok in _SPACES.sub(" ", text).strip().split(" ")]


def _ngrams(tokens: Sequence[str], n: int) -> Counter[Ngram]:
    return Counter(zip(*(tokens[i:] for i in range(n))))


def _as_tokens(text: str | Sequence[str]) -> list[str]:
    return mteval_tokenize(text) if isinstance(text, str) else list(text)


class MtevalAccumulator:
    """Corpus BLEU + NIST accumulator in the official scorer's style.

    ``reset()``, ``append(hyp, refs)``, then ``bleu()``, ``nist()`` or ``score()``.
    ``hyp``/``refs`` are raw strings (tokenised here) or token lists (used as is).
    NIST's information weights come from all references appended so far, so it is
    only meaningful once the whole set has been appended.
    """

    # mteval's beta: the NIST length penalty is 0.5 at 2/3 of the reference length
    NIST_BETA = -math.log(0.5) / math.log(1.5) ** 2

    def __init__(self, bleu_n: int = 4, nist_n: int = 5) -> None:
        self.bleu_n = bleu_n
        self.nist_n = nist_n
        self.reset()

    def reset(self) -> None:
        """Forget all segments."""
        max_n = max(self.bleu_n, self.nist_n)
        self.hits = [0] * max_n  # clipped matches per order
        self.totals = [0] * max_n  # hypothesis n-grams per order
        self.hyp_len = 0
        self.closest_ref_len = 0  # BLEU's reference length
        self.avg_ref_len = 0.0  # NIST's reference length
        self.ref_counts: Counter[Ngram] = Counter()  # every n-gram of every ref; () = word count
        self.seg_hits: list[dict[Ngram, int]] = []  # NIST: clipped hits per segment

    def append(self, hyp: str | Sequence[str], refs: Sequence[str | Sequence[str]]) -> None:
        """Add one segment: a hypothesis and its (one or more) references."""
        hyp_toks = _as_tokens(hyp)
        ref_toks = [_as_tokens(r) for r in refs]
        if not ref_toks:
            raise ValueError("BLEU/NIST: a segment needs at least one reference")
        hits: dict[Ngram, int] = {}
        for n in range(1, len(self.hits) + 1):
            limits: dict[Ngram, int] = {}  # clipping limit: the highest count in any one reference
            for ref in ref_toks:
                for g, c in _ngrams(ref, n).items():
                    if c > limits.get(g, 0):
                        limits[g] = c
                # Counter.update on an iterable counts in C; NIST counts every reference
                self.ref_counts.update(zip(*(ref[i:] for i in range(n))))
            for g, c in _ngrams(hyp_toks, n).items():
                if g in limits:
                    hits[g] = min(c, limits[g])
                    self.hits[n - 1] += hits[g]
            self.totals[n - 1] += len(hyp_toks) - n + 1  # may be negative: official quirk
        self.seg_hits.append(hits)
        ref_words = sum(len(r) for r in ref_toks)
        self.ref_counts[()] += ref_words
        self.hyp_len += len(hyp_toks)
        self.avg_ref_len += ref_words / len(ref_toks)
        # BLEU: the reference closest in length; on a tie the shorter one
        self.closest_ref_len += min((abs(len(r) - len(hyp_toks)), len(r)) for r in ref_toks)[1]

    def bleu(self) -> float:
        """Corpus BLEU as a fraction (0.6593, not 65.93)."""
        hits, totals = self.hits[: self.bleu_n], self.totals[: self.bleu_n]
        log_prec = sum(math.log(max(h, 1e-15) / max(t, 1e-9)) for h, t in zip(hits, totals))
        hyp_len, ref_len = totals[0], self.closest_ref_len
        bp = math.exp(1.0 - ref_len / (hyp_len if hyp_len else 1e-5)) if hyp_len <= ref_len else 1.0
        return bp * math.exp(log_prec / self.bleu_n)

    def info(self, ngram: Ngram) -> float:
        """NIST information weight of an n-gram (bits); 0 for n-grams no reference has."""
        count = self.ref_counts.get(ngram, 0)
        return math.log2(self.ref_counts[ngram[:-1]] / count) if count else 0.0

    def nist(self) -> float:
        """Corpus NIST score."""
        gains = [0.0] * self.nist_n
        for hits in self.seg_hits:
            for g, c in hits.items():
                if len(g) <= self.nist_n:
                    gains[len(g) - 1] += self.info(g) * c
        # a total of 0 (no hypothesis reaches n tokens) counts as 1, so the term is 0
        score = sum(gain / (total or 1) for gain, total in zip(gains, self.totals))
        ratio = self.hyp_len / self.avg_ref_len if self.avg_ref_len else 0.0
        if ratio >= 1:
            return score
        if ratio <= 0:
            return 0.0
        return score * math.exp(-self.NIST_BETA * math.log(ratio) ** 2)

    def score(self) -> dict[str, float]:
        """``{"BLEU": ..., "NIST": ...}``."""
        return {"BLEU": self.bleu(), "NIST": self.nist()}


def corpus_mteval(refs: Sequence[Sequence[str]], hyps: Sequence[str]) -> dict[str, float]:
    """``{"BLEU", "NIST"}`` of ``hyps`` against the reference groups ``refs`` (same order)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} reference groups")
    acc = MtevalAccumulator()
    for hyp, group in zip(hyps, refs):
        acc.append(hyp, group)
    return acc.score()


def corpus_bleu(refs: Sequence[Sequence[str]], hyps: Sequence[str]) -> float:
    """Corpus BLEU-4 (fraction) of ``hyps`` against the reference groups ``refs``."""
    return corpus_mteval(refs, hyps)["BLEU"]


def corpus_nist(refs: Sequence[Sequence[str]], hyps: Sequence[str]) -> float:
    """Corpus NIST-5 of ``hyps`` against the reference groups ``refs``."""
    return corpus_mteval(refs, hyps)["NIST"]
