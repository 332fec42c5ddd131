"""The five E2E NLG metrics, as the official E2E challenge scorer computes them.

Official scorer: tuetschek/e2e-metrics ``measure_scores.py -p`` (Python BLEU/NIST),
multi-reference. ``evaluate`` returns BLEU (a fraction, e.g. 0.6593), NIST,
METEOR, ROUGE_L and CIDEr; see ``metrics.mteval`` and ``metrics.coco`` for how
each is computed and ``tests/test_metrics_golden.py`` for the agreement with the
official scorer's own output.

The scorer scores exactly the texts it is given. Whether references are the raw
human texts (``raw``: the official references, ``read_refs``) or the
space-tokenised ones of the ``context||completion`` files (``tokenized``:
``read_context_completion``) is the caller's choice, and it changes the numbers.

Command line::

    python -m metrics.e2e --refs REFS --hyps HYPS [--json] [--no-meteor]
    splitlora-score --refs REFS --hyps HYPS

REFS is either the official text format -- each MR's references on consecutive
lines, one blank line between MRs -- or a CSV with ``mr`` and ``ref`` columns
(the E2E ``testset_w_refs.csv``), whose references are grouped per MR in order
of first appearance. HYPS has one line per MR, in the same order.

Input normalisation (all files UTF-8): a leading BOM is dropped, CRLF/CR line
ends become LF (``\\r`` stripped), each line is stripped of surrounding
whitespace (as the official scorer does), trailing blank lines are ignored.
Bad input raises ``InputError`` (exit status 2 on the command line).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from metrics.coco import cider, rouge_l, start_meteor, tokenize_for_coco
from metrics.mteval import corpus_mteval

__all__ = [
    "METRICS",
    "E2EScorer",
    "InputError",
    "evaluate",
    "format_scores",
    "main",
    "read_context_completion",
    "read_hyps",
    "read_refs",
]

METRICS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")


class InputError(ValueError):
    """Malformed scorer input (files or lists); the message says what and where."""


def _check_inputs(refs: Sequence[Sequence[str]], hyps: Sequence[str]) -> None:
    if isinstance(hyps, str) or any(not isinstance(h, str) for h in hyps):
        raise InputError("hypotheses must be a list of strings")
    if len(refs) != len(hyps):
        raise InputError(f"{len(hyps)} hypotheses but {len(refs)} MRs (reference groups): the counts must match")
    if not hyps:
        raise InputError("nothing to score: no hypotheses")
    for i, group in enumerate(refs):
        if isinstance(group, str) or any(not isinstance(r, str) for r in group):
            raise InputError(f"reference group {i} must be a list of strings")
        if not group:
            raise InputError(f"reference group {i} (MR #{i + 1}) is empty")


def evaluate(
    refs: Sequence[Sequence[str]],
    hyps: Sequence[str],
    *,
    meteor: bool = True,
    timings: dict[str, float] | None = None,
) -> dict[str, float | None]:
    """Score ``hyps`` (one per MR) against ``refs`` (each MR's list of references).

    Scores the texts exactly as given (raw or tokenised references alike; the
    metrics do their own normalisation, like the official scorer). Returns
    ``{"BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"}`` on the official scale
    (BLEU as a fraction). ``METEOR`` is ``None`` when ``meteor=False`` or when
    Java is missing (then with a note on stderr). One Java process is started
    for METEOR and always stopped before returning; it loads and scores while
    the other metrics are computed. If ``timings`` is given it receives wall
    seconds per stage (``meteor_wait``: time left waiting for METEOR).
    """
    _check_inputs(refs, hyps)
    stage = {} if timings is None else timings
    t0 = time.perf_counter()
    proc = start_meteor(meteor)  # loads its paraphrase table while Python works below
    try:
        t = time.perf_counter()
        gts, res = tokenize_for_coco(refs, hyps)
        stage["ptb_tokenize"] = time.perf_counter() - t
        if proc is not None:
            proc.submit(gts, res)  # METEOR scores in Java while the rest runs here
        t = time.perf_counter()
        scores: dict[str, float | None] = dict(corpus_mteval(refs, hyps))
        stage["bleu_nist"] = time.perf_counter() - t
        t = time.perf_counter()
        scores["ROUGE_L"] = rouge_l(gts, res)
        stage["rouge_l"] = time.perf_counter() - t
        t = time.perf_counter()
        scores["CIDEr"] = cider(gts, res)
        stage["cider"] = time.perf_counter() - t
        t = time.perf_counter()
        scores["METEOR"] = proc.result() if proc is not None else None
        stage["meteor_wait"] = time.perf_counter() - t
    finally:
        if proc is not None:
            proc.close()
    stage["total"] = time.perf_counter() - t0
    return {name: scores[name] for name in METRICS}


class E2EScorer:
    """Accumulator in the official scorer's style: ``reset()``, ``append(hyp, refs)``, ``score()``."""

    def __init__(self, *, meteor: bool = True) -> None:
        self.meteor = meteor
        self.reset()

    def reset(self) -> None:
        """Forget all appended segments."""
        self.hyps: list[str] = []
        self.refs: list[list[str]] = []

    def append(self, hyp: str, refs: Sequence[str]) -> None:
        """Add one MR: its hypothesis and its references."""
        self.hyps.append(hyp)
        self.refs.append(list(refs))

    def score(self) -> dict[str, float | None]:
        """All five metrics over the appended MRs (corpus level)."""
        return evaluate(self.refs, self.hyps, meteor=self.meteor)


# ---------------------------------------------------------------- file input


def _read_lines(path: str | Path) -> list[str]:
    """Decode ``path`` as UTF-8 (clear error with byte offset otherwise) and split into lines."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 4]
        raise InputError(
            f"{path}: not valid UTF-8 at byte offset {exc.start} (bytes {bad!r}); re-encode the file as UTF-8"
        ) from exc
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    while lines and not lines[-1].strip():  # trailing blank lines (and the final newline)
        lines.pop()
    return lines


_CSV_SRC = re.compile(r"^(mr|src|source|meaning[_ .-]?rep(resentation)?|da)s?$", re.I)
_CSV_REF = re.compile(r"^(ref(erence)?|trg|tgt|target|human[_ .-]?ref(erence)?)s?$", re.I)


def _looks_like_csv(path: Path, first_line: str) -> bool:
    if path.suffix.lower() in (".csv", ".tsv"):
        return True
    cells = next(csv.reader([first_line]), [])
    return len(cells) >= 2 and any(_CSV_SRC.match(c.strip()) for c in cells)


def _read_refs_csv(path: Path, lines: list[str]) -> list[list[str]]:
    delimiter = "\t" if "\t" in lines[0] else ","
    rows = list(csv.reader(lines, delimiter=delimiter))
    header = [c.strip() for c in rows[0]]
    src_cols = [i for i, c in enumerate(header) if _CSV_SRC.match(c)]
    ref_cols = [i for i, c in enumerate(header) if _CSV_REF.match(c)]
    if len(src_cols) != 1 or len(ref_cols) != 1:
        raise InputError(f"{path}: need a header with one MR column (e.g. 'mr') and one reference column ('ref')")
    src, ref = src_cols[0], ref_cols[0]
    groups: dict[str, list[str]] = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise InputError(f"{path}:{line_no}: {len(row)} columns, the header has {len(header)}")
        # the official scorer repairs these mis-encodings in CSV input; so do we
        text = row[ref].replace("Ł", "£").replace("Â£", "£").replace("Ã©", "é").replace("ã©", "é").strip()
        if not text:
            raise InputError(f"{path}:{line_no}: empty reference")
        groups.setdefault(row[src], []).append(text)
    if not groups:
        raise InputError(f"{path}: no references")
    return list(groups.values())


def read_refs(path: str | Path) -> list[list[str]]:
    """Read references, grouped per MR, from the official text format or a CSV (see module doc).

    Text format: groups are separated by one blank line; a file with no blank
    line at all holds one reference per MR (as the official scorer reads it).
    """
    path = Path(path)
    lines = _read_lines(path)
    if not lines:
        raise InputError(f"{path}: no references")
    if _looks_like_csv(path, lines[0]):
        return _read_refs_csv(path, lines)
    groups: list[list[str]] = [[]]
    for line_no, line in enumerate(lines, start=1):
        line = line.strip()
        if line:
            groups[-1].append(line)
        elif groups[-1]:
            groups.append([])
        else:
            raise InputError(
                f"{path}:{line_no}: empty reference group (a second blank line in a row, or a blank first line)"
            )
    if len(groups) == 1:
        return [[ref] for ref in groups[0]]
    return groups


def read_hyps(path: str | Path) -> list[str]:
    """Read hypotheses, one line per MR (a blank line in the middle is an empty hypothesis)."""
    return [line.strip() for line in _read_lines(path)]


def read_context_completion(path: str | Path) -> tuple[list[str], list[list[str]]]:
    """Read a ``context||completion`` file (the tokenised refs): ``(contexts, completions per context)``.

    Contexts are in order of first appearance; each completion loses its
    trailing space. These are the ``tokenized`` reference style.
    """
    path = Path(path)
    groups: dict[str, list[str]] = {}
    for line_no, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        context, sep, completion = line.partition("||")
        if not sep:
            raise InputError(f"{path}:{line_no}: no '||' between context and completion")
        completion = completion.rstrip()
        if not completion.strip():
            raise InputError(f"{path}:{line_no}: empty completion")
        groups.setdefault(context.strip(), []).append(completion.strip())
    if not groups:
        raise InputError(f"{path}: no examples")
    return list(groups), list(groups.values())


# ---------------------------------------------------------------- command line


def format_scores(scores: dict[str, float | None]) -> str:
    """The official scorer's text layout (4 decimals)."""
    lines = ["SCORES:", "=============="]
    for name in METRICS:
        value = scores[name]
        lines.append(f"{name}: {value:.4f}" if value is not None else f"{name}: n/a")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``splitlora-score``); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="splitlora-score",
        description="Score E2E NLG outputs like the official E2E scorer (measure_scores.py -p). "
        "Scores the references as given (raw or tokenised).",
    )
    parser.add_argument("--refs", required=True, help="references: official text format or CSV (mr,ref)")
    parser.add_argument("--hyps", required=True, help="hypotheses: one line per MR, same order")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (no Java needed)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        refs = read_refs(args.refs)
        hyps = read_hyps(args.hyps)
        if len(refs) != len(hyps):
            raise InputError(
                f"{args.hyps} has {len(hyps)} hypotheses but {args.refs} has {len(refs)} MRs: the counts must match"
            )
        scores = evaluate(refs, hyps, meteor=not args.no_meteor)
    except (InputError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(scores) if args.json else format_scores(scores))
    n_refs = sum(len(g) for g in refs)
    print(f"scored {len(hyps)} MRs ({n_refs} references) in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
