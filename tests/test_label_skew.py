"""The label-skew experiment recipe end to end at smoke scale: runs, results, table, plot, skip on rerun."""

import json

import pytest

from launch.experiments.label_skew import arms, main, partition

pytestmark = pytest.mark.slow


def test_arms_map_the_papers_rank_to_each_method():
    main_arms = dict(arms("main", 1, 16, 3, [1]))
    assert main_arms["lora-a2"] == ["--fed.strategy=lora-a2", "--lora.r=16", "--fed.client_ranks=1,1,1"]
    assert main_arms["fedavg"] == ["--fed.strategy=fedavg", "--lora.r=1"]
    ablation = [label for label, _ in arms("ablation", 1, 16, 2, [1])]
    assert ablation == ["ffa", "+alternate", "+lr_B=5lr_A", "+rank-selection"]
    assert dict(arms("hetero", 1, 16, 3, [1, 4]))["hetlora"][-1] == "--fed.client_ranks=1,4,1"
    matched = dict(arms("main", 2, 16, 2, [1], match_scaling=True))["lora-a2"]
    assert matched[-1] == "--lora.alpha=128"  # 128 / 16 = 16 / 2
    hetero = dict(arms("hetero", 1, 16, 4, [1, 2, 4, 8], match_scaling=True))
    assert hetero["hetlora"][-1] == hetero["flexlora"][-1] == "--lora.alpha=128"  # 128 / 8 allocated = 16
    assert hetero["lora-a2"][-1] == "--lora.alpha=256"  # 256 / r_G 16 = 16
    assert partition("0.01") == "dirichlet:0.01" and partition("pathological:2") == "pathological:2"
    with pytest.raises(ValueError, match="unknown arms"):
        arms("other", 1, 16, 2, [1])


def test_smoke_grid_writes_results_and_skips_finished_runs(tmp_path, encoder_dirs, capsys):
    argv = ["--model.path", str(encoder_dirs["bert"]), "--out", str(tmp_path), "--clients", "2", "--ranks", "1",
            "--skews", "0.5", "--rounds", "2", "--steps-per-round", "3", "--batch", "8", "--global-rank", "2",
            "--lr", "5e-3", "--data.max_train_examples=200", "--only", "fedavg,lora-a2"]
    assert main([*argv, "--arms", "main"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert sorted(r["arm"] for r in results) == ["fedavg", "lora-a2"]  # --only (arms() maps all four above)
    for r in results:
        assert r["rounds"] == [1, 2] and len(r["accuracy"]) == 2 and r["final"]["n"] == 200
        assert r["accuracy"][-1] == r["final"]["accuracy"] and r["up_params_per_client"] > 0
    table = (tmp_path / "table.md").read_text()
    assert "| lora-a2 | 1 |" in table and "(n=1)" in table
    assert (tmp_path / "accuracy.png").stat().st_size > 0
    capsys.readouterr()
    assert main([*argv, "--arms", "main"]) == 0  # everything done: skipped, same results
    assert capsys.readouterr().out.count("skipped") == 2
