"""Our scorer reproduces the official E2E scorer's numbers (golden/scores.json, ``official_p``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import metrics.coco
import metrics.e2e
from metrics.e2e import evaluate, read_hyps, read_refs
from metrics.mteval import corpus_bleu

REPO = Path(__file__).resolve().parents[1]
# official output has 4 decimals: half a unit of the last digit for the fractions,
# 0.005 for NIST and CIDEr (the tolerances asked for)
TOL = {"BLEU": 5e-4, "NIST": 5e-3, "METEOR": 5e-4, "ROUGE_L": 5e-4, "CIDEr": 5e-3}


def _e2e_dir() -> Path | None:
    env = os.environ.get("SPLITLORA_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared/data/e2e"
    return root if (root / "golden" / "scores.json").is_file() else None


E2E = _e2e_dir()
GOLDEN = json.loads((E2E / "golden" / "scores.json").read_text()) if E2E else {}
needs_data = pytest.mark.skipif(E2E is None, reason="E2E golden data not found : set SPLITLORA_DATA (docs/data.md)")
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="java not on PATH (METEOR needs it)")


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metrics.e2e", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=280
    )


def _assert_close(ours: dict, official: dict, names: tuple[str, ...]) -> None:
    for name in names:
        assert ours[name] == pytest.approx(official[name], abs=TOL[name]), (name, ours[name], official[name])


# The two METEOR runs below take 20-40 s each here (a JVM loading METEOR's paraphrase
# table, ~20 s of Java CPU), hence "slow"; they stay in the default run.
@pytest.mark.slow
@needs_data
@needs_java
def test_cli_reproduces_tgen() -> None:
    gold = GOLDEN["test.tgen"]
    golden = E2E / "golden"
    proc = _cli("--refs", str(golden / gold["refs"]), "--hyps", str(golden / gold["hyps"]), "--json")
    assert proc.returncode == 0, proc.stderr
    _assert_close(json.loads(proc.stdout), gold["official_p"], metrics.e2e.METRICS)
    assert "scored 630 MRs (4693 references) in" in proc.stderr


@pytest.mark.slow
@needs_data
@needs_java
def test_evaluate_reproduces_template_and_stops_java(monkeypatch: pytest.MonkeyPatch) -> None:
    gold = GOLDEN["test.template"]
    golden = E2E / "golden"
    started = []

    def spy(enabled: bool = True) -> metrics.coco.MeteorProcess | None:
        proc = metrics.coco.start_meteor(enabled)
        started.append(proc)
        return proc

    monkeypatch.setattr(metrics.e2e, "start_meteor", spy)
    timings: dict[str, float] = {}
    scores = evaluate(read_refs(golden / gold["refs"]), read_hyps(golden / gold["hyps"]), timings=timings)
    _assert_close(scores, gold["official_p"], metrics.e2e.METRICS)
    # exactly one Java process, and it is gone afterwards
    assert len(started) == 1 and started[0] is not None
    assert started[0].meteor_p is None
    assert {"bleu_nist", "ptb_tokenize", "rouge_l", "cider", "total"} <= set(timings)


@needs_data
@pytest.mark.parametrize("system", ["test.tgen", "test.template"])
def test_without_java_four_metrics_still_match(system: str, tmp_path: Path) -> None:
    gold = GOLDEN[system]
    golden = E2E / "golden"
    # a PATH with no java on it (the interpreter is called by absolute path)
    env = {**os.environ, "PATH": str(tmp_path)}
    proc = _cli("--refs", str(golden / gold["refs"]), "--hyps", str(golden / gold["hyps"]), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    scores = json.loads(proc.stdout)
    assert scores["METEOR"] is None
    assert "METEOR unavailable: java not found on PATH" in proc.stderr
    _assert_close(scores, gold["official_p"], ("BLEU", "NIST", "ROUGE_L", "CIDEr"))


@needs_data
def test_csv_references_group_like_the_text_file() -> None:
    csv_refs = E2E / "e2e-dataset" / "testset_w_refs.csv"
    if not csv_refs.is_file():
        pytest.skip(f"{csv_refs} missing")

    def squeeze(groups: list[list[str]]) -> list[list[str]]:
        # the text file has runs of spaces collapsed; both tokenisers ignore them anyway
        return [[" ".join(ref.split()) for ref in group] for group in groups]

    assert squeeze(read_refs(csv_refs)) == squeeze(read_refs(E2E / "golden" / "test.refs.txt"))


@needs_data
def test_bleu_matches_sacrebleu_on_the_golden_outputs() -> None:
    sacrebleu = pytest.importorskip("sacrebleu")
    refs = read_refs(E2E / "golden" / "test.refs.txt")
    streams = [[g[i] if i < len(g) else None for g in refs] for i in range(max(map(len, refs)))]
    for system in ("test.tgen", "test.template"):
        hyps = read_hyps(E2E / "golden" / GOLDEN[system]["hyps"])
        theirs = sacrebleu.corpus_bleu(hyps, streams, lowercase=True, tokenize="13a").score / 100
        assert corpus_bleu(refs, hyps) == pytest.approx(theirs, abs=1e-12)
