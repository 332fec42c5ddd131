"""launch.heterogeneity: mixed per-client budgets (a/b/c), names, table with slot copy rates, plot."""

import pytest

from launch.heterogeneity import (
    budget_label,
    main,
    markdown_table,
    parse_args,
    parse_budget,
    plot,
    run_name,
    train_args,
)


def test_mixed_budget_gives_one_rank_per_client():
    a, _ = parse_args(["--ranks", "1,8,1/2/4", "--clients", "3", "--global-rank", "8"])
    assert a.ranks == [1, 8, (1, 2, 4)]
    assert "--fed.client_ranks=1,2,4" in train_args(a, "iid", "lora-a2", (1, 2, 4))
    assert "--fed.client_ranks=1,1,1" in train_args(a, "iid", "lora-a2", 1)
    assert run_name("dirichlet:0.01", "flexlora", (1, 2, 4)) == "dirichlet0.01-flexlora-r1-2-4"
    assert [budget_label(r) for r in a.ranks] == ["1", "8", "1/2/4"] and parse_budget(" 4 ") == 4


@pytest.mark.parametrize("argv, needle", [
    (["--ranks", "1/2/4", "--clients", "3"], "needs --global-rank"),
    (["--ranks", "1/2", "--clients", "3", "--global-rank", "8"], "one rank per client"),
    (["--ranks", "1/16/4", "--clients", "3", "--global-rank", "8"], "<= --global-rank 8"),
    (["--ranks", "x", "--clients", "3"], "integers or a/b/c"),
])
def test_bad_budgets_are_refused(argv, needle, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert needle in capsys.readouterr().err


def test_table_and_plot_show_budgets_and_copy_rates(tmp_path):
    rows = [{"partition": "iid", "strategy": s, "rank": label, "rc": 0, "val_loss": v, "ppl": 7.0,
             "up_bytes_per_client": 1024, "eval": {"BLEU": 0.4}, "slots": {"name": 0.75, "near": 0.25}}
            for s, v in (("fedavg", 2.0), ("lora-a2", 1.9)) for label in ("1", "1/2/4")]
    table = markdown_table(rows, with_eval=True).splitlines()
    assert table[0].endswith("| name / near copied |")
    assert table[3] == "| iid | fedavg | 1/2/4 | 2.0000 | 7.00 | 1.0 | 0.4000 | – | – | – | – | 75.0% / 25.0% |"
    plot(rows, ["iid"], ["fedavg", "lora-a2"], ["1", "1/2/4"], tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_main_refuses_before_running_anything(tmp_path):
    with pytest.raises(SystemExit):
        main(["--ranks", "1/2/4", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_table_only_reads_finished_runs_and_runs_nothing(tmp_path, monkeypatch):
    import json
    import subprocess

    def no_run(*a, **k):
        raise AssertionError("--table-only must not start a run")

    monkeypatch.setattr(subprocess, "run", no_run)
    done = tmp_path / "runs" / "iid-fedavg-r1"
    done.mkdir(parents=True)
    (done / "summary.json").write_text(json.dumps({"val_loss": 1.5, "clients": {"1": {"comm": {"up_bytes": 2048}}}}))
    assert main(["--strategies", "fedavg,ffa", "--ranks", "1", "--partitions", "iid", "--table-only",
                 "--out", str(tmp_path)]) == 0
    table = (tmp_path / "table.md").read_text().splitlines()
    assert table[2] == "| iid | fedavg | 1 | 1.5000 | 4.48 | 2.0 |"
    assert table[3] == "| iid | ffa | 1 | not run |  |  |"


def test_a_strategy_that_ignores_budgets_runs_once(tmp_path, monkeypatch):
    """fedavg trains r_G ranks whatever fed.client_ranks says: its first budget's run stands
    for the others; flexlora uses the budgets and needs a run per budget."""
    import json
    import subprocess

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("no runs")))
    done = tmp_path / "runs" / "iid-fedavg-r8"
    done.mkdir(parents=True)
    (done / "summary.json").write_text(json.dumps({"val_loss": 1.5, "clients": {}}))
    assert main(["--strategies", "fedavg,flexlora", "--ranks", "8,1", "--global-rank", "8", "--partitions", "iid",
                 "--table-only", "--out", str(tmp_path)]) == 0
    lines = (tmp_path / "table.md").read_text().splitlines()
    assert lines[2].startswith("| iid | fedavg | 8 | 1.5000 |")
    assert lines[3].startswith("| iid | flexlora | 8 | not run")
    assert lines[4].startswith("| iid | fedavg | 1 (= 8: ignores r_k) | 1.5000 |")
    assert lines[5].startswith("| iid | flexlora | 1 | not run")
