"""Reading scorer input, and rejecting bad input with clear errors (metrics.e2e)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from metrics.e2e import (
    E2EScorer,
    InputError,
    evaluate,
    format_scores,
    read_context_completion,
    read_hyps,
    read_refs,
)

REPO = Path(__file__).resolve().parents[1]
REFS_TXT = "A is a pub.\nA is a bar.\n\nB is a cafe.\nThe cafe B.\nB serves tea.\n"
HYPS_TXT = "A is a pub.\nB is a cafe.\n"


def _write(tmp_path: Path, name: str, data: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metrics.e2e", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


# ---------------------------------------------------------------- reading


def test_read_official_format(tmp_path: Path) -> None:
    refs = read_refs(_write(tmp_path, "refs.txt", REFS_TXT))
    assert refs == [["A is a pub.", "A is a bar."], ["B is a cafe.", "The cafe B.", "B serves tea."]]
    assert read_hyps(_write(tmp_path, "hyps.txt", HYPS_TXT)) == ["A is a pub.", "B is a cafe."]


def test_crlf_bom_and_trailing_blank_lines_are_normalised(tmp_path: Path) -> None:
    crlf = "\ufeff" + REFS_TXT.replace("\n", "\r\n") + "\r\n\r\n"
    assert read_refs(_write(tmp_path, "r.txt", crlf)) == read_refs(_write(tmp_path, "r2.txt", REFS_TXT))
    assert read_hyps(_write(tmp_path, "h.txt", HYPS_TXT.replace("\n", "\r\n") + "\n\n  \n")) == [
        "A is a pub.",
        "B is a cafe.",
    ]


def test_single_group_file_is_one_reference_per_mr(tmp_path: Path) -> None:
    # as the official scorer reads it: no blank line at all = single-reference data
    assert read_refs(_write(tmp_path, "r.txt", "one\ntwo\n")) == [["one"], ["two"]]


def test_blank_hypothesis_in_the_middle_is_kept(tmp_path: Path) -> None:
    assert read_hyps(_write(tmp_path, "h.txt", "a\n\nc\n")) == ["a", "", "c"]


def test_csv_refs_grouped_by_mr_in_first_appearance_order(tmp_path: Path) -> None:
    data = 'mr,ref\n"name[X]","X one."\n"name[Y]","Y one."\n"name[X]","X two."\n"name[Y]","Y Â£20."\n'
    # grouped per MR (first appearance order); the official scorer's "Â£" repair applies
    assert read_refs(_write(tmp_path, "refs.csv", data)) == [["X one.", "X two."], ["Y one.", "Y £20."]]
    # detected by header even without the extension
    assert read_refs(_write(tmp_path, "refs.dat", data)) == read_refs(tmp_path / "refs.csv")


def test_context_completion_reader(tmp_path: Path) -> None:
    data = "name : A | area : riverside||A is by the river . \nname : A | area : riverside||A , riverside . \n"
    data += "name : B||B is here . \n"
    contexts, completions = read_context_completion(_write(tmp_path, "test.txt", data))
    assert contexts == ["name : A | area : riverside", "name : B"]
    assert completions == [["A is by the river .", "A , riverside ."], ["B is here ."]]


# ---------------------------------------------------------------- bad input


def test_empty_reference_group(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"refs.txt:3: empty reference group"):
        read_refs(_write(tmp_path, "refs.txt", "a\n\n\nb\n"))
    with pytest.raises(InputError, match=r"reference group 1 \(MR #2\) is empty"):
        evaluate([["a"], []], ["a", "b"], meteor=False)


def test_non_utf8_names_file_and_offset(tmp_path: Path) -> None:
    path = _write(tmp_path, "hyps.txt", b"ok line\ncaf\xe9 latin-1\n")
    with pytest.raises(InputError, match=r"hyps.txt: not valid UTF-8 at byte offset 11"):
        read_hyps(path)


def test_count_mismatch_says_both_counts() -> None:
    with pytest.raises(InputError, match="3 hypotheses but 2 MRs"):
        evaluate([["a"], ["b"]], ["a", "b", "c"], meteor=False)


def test_bad_csv_and_context_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="header"):
        read_refs(_write(tmp_path, "refs.csv", "foo,bar\n1,2\n"))
    with pytest.raises(InputError, match="empty reference"):
        read_refs(_write(tmp_path, "refs.csv", 'mr,ref\n"m",""\n'))
    with pytest.raises(InputError, match=r"t.txt:2: no '\|\|'"):
        read_context_completion(_write(tmp_path, "t.txt", "a||b \nno separator\n"))


def test_wrong_types_rejected() -> None:
    with pytest.raises(InputError, match="list of strings"):
        evaluate([["a"]], "a", meteor=False)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="reference group 0 must be a list of strings"):
        evaluate(["abc"], ["a"], meteor=False)  # type: ignore[list-item]


def test_cli_reports_mismatch_and_exits_2(tmp_path: Path) -> None:
    refs = _write(tmp_path, "refs.txt", REFS_TXT)
    hyps = _write(tmp_path, "hyps.txt", "only one\n")
    proc = _cli("--refs", str(refs), "--hyps", str(hyps), "--no-meteor")
    assert proc.returncode == 2
    assert "has 1 hypotheses but" in proc.stderr and "has 2 MRs" in proc.stderr
    assert proc.stdout == ""


def test_cli_reports_bad_encoding(tmp_path: Path) -> None:
    refs = _write(tmp_path, "refs.txt", b"\xff\xfebad\n")
    proc = _cli("--refs", str(refs), "--hyps", str(refs), "--no-meteor")
    assert proc.returncode == 2 and "not valid UTF-8 at byte offset 0" in proc.stderr


# ---------------------------------------------------------------- scoring small inputs


def test_small_evaluate_and_cli_agree(tmp_path: Path) -> None:
    refs = _write(tmp_path, "refs.txt", REFS_TXT)
    hyps = _write(tmp_path, "hyps.txt", HYPS_TXT)
    proc = _cli("--refs", str(refs), "--hyps", str(hyps), "--json", "--no-meteor")
    assert proc.returncode == 0, proc.stderr
    from_cli = json.loads(proc.stdout)
    direct = evaluate(read_refs(refs), read_hyps(hyps), meteor=False)
    assert from_cli == pytest.approx(direct)
    assert list(from_cli) == ["BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"] and from_cli["METEOR"] is None
    # exact copies of one reference each: ROUGE_L is 1
    assert from_cli["ROUGE_L"] == pytest.approx(1.0)


def test_coco_scores_matches_evaluate() -> None:
    from metrics.coco import coco_scores

    refs = [["A is a pub.", "A is a bar."], ["B is a cafe.", "The cafe B."]]
    hyps = ["A is a pub near B.", "B is a cafe."]
    full = evaluate(refs, hyps, meteor=False)
    assert coco_scores(refs, hyps, with_meteor=False) == {k: full[k] for k in ("METEOR", "ROUGE_L", "CIDEr")}


def test_accumulator_matches_evaluate() -> None:
    scorer = E2EScorer(meteor=False)
    scorer.append("A is a pub.", ["A is a pub.", "A is a bar."])
    scorer.append("B is a cafe.", ["B is a cafe.", "The cafe B."])
    assert scorer.score() == evaluate(
        [["A is a pub.", "A is a bar."], ["B is a cafe.", "The cafe B."]], ["A is a pub.", "B is a cafe."], meteor=False
    )
    scorer.reset()
    assert scorer.hyps == [] and scorer.refs == []


def test_text_output_layout() -> None:
    text = format_scores({"BLEU": 0.65927, "NIST": 8.5923, "METEOR": None, "ROUGE_L": 0.685, "CIDEr": 2.23384})
    assert text.splitlines() == [
        "SCORES:",
        "==============",
        "BLEU: 0.6593",
        "NIST: 8.5923",
        "METEOR: n/a",
        "ROUGE_L: 0.6850",
        "CIDEr: 2.2338",
    ]


def test_metrics_package_stands_alone() -> None:
    # metrics must not pull in torch (or the training code)
    code = "import sys, metrics.e2e\nprint([m for m in ('torch', 'models', 'runtime', 'launch') if m in sys.modules])"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr
