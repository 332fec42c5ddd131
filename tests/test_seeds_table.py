"""launch.experiments.seeds: per-seed tables, paired gaps and the sign test, from files or run folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launch.experiments import seeds
from launch.experiments.common import REPO


def _rec(method: str, r: int, seed: int, bleu: float, partition: str = "contiguous",
         scope: str = "generated") -> dict:
    return {"dir": f"{method}-r{r}-s{seed}", "method": method, "r": r, "seed": seed, "partition": partition,
            "finetune": "lora", "repeat_scope": scope, "scores": {"raw": {"BLEU": bleu}, "tokenized": {"BLEU": bleu}}}


def _write(tmp_path: Path, recs: list[dict]) -> Path:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(recs))
    return path


def test_sign_test_exact_values() -> None:
    assert seeds.sign_test(10, 1) == pytest.approx(2 * (1 + 11) / 2 ** 11)
    assert seeds.sign_test(5, 0) == pytest.approx(2 / 32)
    assert seeds.sign_test(3, 3) == 1.0
    assert seeds.sign_test(0, 0) == 1.0


def test_tables_and_gaps_from_a_results_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    recs = [_rec("cenlora", 4, 1, 0.60), _rec("cenlora", 4, 2, 0.62), _rec("cenlora", 4, 3, 0.61),
            _rec("splitlora", 4, 1, 0.59), _rec("splitlora", 4, 2, 0.63),
            _rec("splitlora", 8, 1, 0.70),  # no CenLoRA at r = 8: not paired, one seed: not in the seed table
            _rec("splitlora", 4, 3, 0.10, scope="sequence"),  # another decoding rule: left out
            dict(_rec("cenlora", 4, 1, 0.58), layers="1..3"),  # a variant of CenLoRA, paired with it
            dict(_rec("splitlora", 4, 1, 0.605), client_lr_scale=3.0)]  # another cell than plain SplitLoRA
    assert seeds.main([str(_write(tmp_path, recs))]) == 0
    out = capsys.readouterr().out
    assert "| cenlora | 4 | 60.00 | 62.00 | 61.00 | 61.00 | 2.00 | 3 |" in out
    assert "| splitlora (contiguous) | 4 | 59.00 | 63.00 | – | 61.00 | 4.00 | 2 |" in out
    assert "| splitlora (contiguous) | 4 | -1.00 | +1.00 | +0.00 |" in out
    assert "2 paired runs, mean +0.00, 1 below / 1 above / 0 tied; sign test p = 1" in out
    assert "| 8 |" not in out
    assert "| cenlora [layers 1..3] | 4 | -2.00 | – | -2.00 |" in out
    assert "| splitlora [client lr x3] (contiguous) | 4 | +0.50 | – | +0.50 |" in out


def test_refuses_ambiguous_runs_and_missing_seeds(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    twice = [_rec("cenlora", 4, 1, 0.60), _rec("cenlora", 4, 1, 0.61)]
    assert seeds.main([str(_write(tmp_path, twice))]) == 2
    assert "two runs of" in capsys.readouterr().err
    no_seed = [{k: v for k, v in _rec("cenlora", 4, 1, 0.6).items() if k != "seed"}]
    assert seeds.main([str(_write(tmp_path, no_seed))]) == 2
    assert "without a seed" in capsys.readouterr().err
    assert seeds.main([str(tmp_path / "absent.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert seeds.main([str(_write(tmp_path, [_rec("cenlora", 4, 1, 0.6)])), "--style", "raw",
                       "--repeat-scope", "sequence"]) == 2
    assert "no run scored" in capsys.readouterr().err


def _run_dir(root: Path, method: str, seed: int, bleu: float) -> None:
    run = root / "runs" / f"{method}-s{seed}"
    (run / "eval-raw").mkdir(parents=True)
    cfg = {"model": {"name": "tiny", "path": None}, "method": method, "lora": {"r": 2},
           "train": {"seed": seed, "finetune": "lora"}, "launch": {"world_size": 1 if method == "cenlora" else 3},
           "data": {"partition": "iid"}, "fed": {"aggregate_every": 10}}
    (run / "config.json").write_text(json.dumps(cfg))
    (run / "summary.json").write_text(json.dumps({"local_steps": 5}))
    (run / "eval-raw" / "scores.json").write_text(json.dumps(
        {"scores": {"BLEU": bleu}, "n_mrs": 8, "data_source": "synthetic",
         "decode": {"num_beams": 1, "repeat_scope": "generated"}}))


def test_reads_recipe_output_folders(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The seed comes from each run's config; one folder per seed, as the recipe is run."""
    for seed, (cen, split) in {7: (0.5, 0.4), 8: (0.6, 0.55)}.items():
        _run_dir(tmp_path / f"s{seed}", "cenlora", seed, cen)
        _run_dir(tmp_path / f"s{seed}", "splitlora", seed, split)
    assert seeds.main([str(tmp_path / "s7"), str(tmp_path / "s8")]) == 0
    out = capsys.readouterr().out
    assert "| splitlora (iid) | 2 | -10.00 | -5.00 | -7.50 |" in out
    assert "2 paired runs, mean -7.50, 2 below / 0 above / 0 tied; sign test p = 0.5" in out


def test_the_committed_mini_cpu_reading_follows_from_its_results(capsys: pytest.CaptureFixture) -> None:
    """README and benchmarks/experiments/mini-cpu say: SplitLoRA below CenLoRA in 10 of 11 paired runs, mean -1.14."""
    results = REPO / "benchmarks" / "experiments" / "mini-cpu" / "results.json"
    assert seeds.main([str(results)]) == 0
    out = capsys.readouterr().out
    assert ("splitlora (contiguous) − cenlora: 11 paired runs, mean -1.14, 10 below / 1 above / 0 tied; "
            "sign test p = 0.0117") in out
