"""The label-skew summary: merging folders, its checks, and the committed summary being current."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from launch.experiments import skew_tables

CLIENTS30 = Path(__file__).resolve().parents[1] / "benchmarks/reports/classification-minilm/clients30"
SETTINGS = {"rounds": 4, "steps_per_round": 20, "batch": 16, "lr": 5e-4, "clients": 30, "global_rank": 16,
            "match_scaling": True, "hetero_ranks": "1,2,4,8", "extra": [], "model_path": "/anywhere"}


def run(arm: str, skew: str, seed: int, acc: float, rank: int = 1, up: int = 100) -> dict:
    return {"arms": "main", "arm": arm, "rank": rank, "skew": skew, "seed": seed, "rounds": [1],
            "accuracy": [acc], "final": {"accuracy": acc}, "up_params_per_client": up}


def folder(tmp: Path, name: str, runs: list[dict], file: str = "results.json", **settings) -> Path:
    (tmp / name).mkdir(exist_ok=True)
    (tmp / name / file).write_text(json.dumps({"settings": {**SETTINGS, **settings}, "runs": runs}))
    return tmp / name


def test_seeds_from_two_folders_make_one_cell(tmp_path: Path) -> None:
    a = folder(tmp_path, "a", [run("lora-a2-matched", "0.01", 110, 0.20), run("fedavg", "0.01", 110, 0.04)])
    b = folder(tmp_path, "b", [run("lora-a2-matched", "0.01", 111, 0.30), run("fedavg", "0.5", 111, 0.10)])
    out = tmp_path / "s.md"
    assert skew_tables.main([str(a), str(b), "--out", str(out)]) == 0
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # accuracy per round beside it
    text = out.read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    # columns: the mild skew first; rows: the baselines before LoRA-A2
    assert rows["arm"].index("0.5") < rows["arm"].index("0.01")
    assert "25.00 ± 5.00 (n=2)" in rows["lora-a2-matched"]
    assert "4.00 ± 0.00 (n=1)" in rows["fedavg"] and "10.00 ± 0.00 (n=1)" in rows["fedavg"]
    assert text.index("| fedavg") < text.index("| lora-a2-matched")
    assert skew_tables.main([str(a), str(b), "--out", str(out), "--check"]) == 0
    out.write_text(text.replace("25.00", "26.00"))
    assert skew_tables.main([str(a), str(b), "--out", str(out), "--check"]) == 1


def test_a_table_holds_one_budget(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = folder(tmp_path, "a", [run("fedavg", "0.01", 110, 0.04)])
    b = folder(tmp_path, "b", [run("fedavg", "0.01", 111, 0.05)], rounds=12)
    assert skew_tables.main([str(a), str(b), "--out", str(tmp_path / "s.md")]) == 2
    assert "rounds = 12" in capsys.readouterr().err
    assert not (tmp_path / "s.md").exists()


def test_a_run_found_twice_must_agree(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = folder(tmp_path, "a", [run("fedavg", "0.01", 110, 0.04)])
    folder(tmp_path, "a", [run("fedavg", "0.01", 110, 0.04)], file="results-again.json")  # the same: fine
    assert skew_tables.main([str(a), "--out", str(tmp_path / "s.md")]) == 0
    b = folder(tmp_path, "b", [run("fedavg", "0.01", 110, 0.05)])
    assert skew_tables.main([str(a), str(b), "--out", str(tmp_path / "s.md")]) == 2
    assert "disagrees" in capsys.readouterr().err


def test_the_committed_summary_is_current(monkeypatch: pytest.MonkeyPatch) -> None:
    """summary.md is what its own command makes from the committed results: nobody edited a figure."""
    summary = CLIENTS30 / "summary.md"
    command = summary.read_text().split("Made by `", 1)[1].split("`", 1)[0]
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "launch.experiments.skew_tables"]
    monkeypatch.chdir(CLIENTS30)
    assert skew_tables.main([*argv[3:], "--check"]) == 0
