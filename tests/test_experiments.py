"""The experiment recipes end to end on the tiny preset (CPU, synthetic data, a few steps),
and their table logic on fixed inputs."""

from __future__ import annotations

import json
import math
import re

import pytest

from launch.experiments import common, cut_rank_sweep, paper_table
from launch.experiments.paper_numbers import METHODS, PAPER, paper_scores
from models.flops import client_flops, lora_parameters
from models.gpt2 import PRESETS
from runtime.config.parse import build_config

CELL = re.compile(r"^\d+\.\d{2}/\d+\.\d{4}/(\.\d{4}|–)/\d+\.\d{2}/\d+\.\d{4}$")  # ours, METEOR optional


def _rows(md: str, section: str) -> list[list[str]]:
    """The table rows (cells stripped) under the heading ``section`` of a markdown file."""
    block = md.split(section, 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in block.splitlines()
            if line.startswith("|")]


@pytest.mark.heavy
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_paper_table_smoke_runs_every_method_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SPLITLORA_DATA", raising=False)
    out = tmp_path / "table"
    base = ["--smoke", "--clients", "2", "--steps", "2", "--out", str(out)]
    assert paper_table.main([*base, "--ranks", "2"]) == 0
    first = capsys.readouterr().out
    assert first.count("training ran") == 3 and first.count("evaluation ran") == 6
    # Same directory, a second rank for SplitLoRA: its r=2 run and evaluations are skipped.
    assert paper_table.main([*base, "--ranks", "1,2", "--methods", "splitlora"]) == 0
    second = capsys.readouterr().out
    assert second.count("training skipped") == 1 and second.count("evaluation skipped") == 2
    assert second.count("training ran") == 1

    md = (out / "paper_table.md").read_text()
    assert "SMOKE SCALE" in md
    for style in ("tokenized", "raw"):
        rows = _rows(md, f"## refs_style = {style}")
        assert rows[0] == ["model", "method", "", "r=1", "r=2"]
        ours = {r[1]: r[3:] for r in rows[2:] if r[2] == "ours"}
        assert set(ours) == {"CenLoRA", "SplitLoRA", "FedLoRA"}
        assert all(CELL.match(c) for c in ours["SplitLoRA"]), ours
        assert CELL.match(ours["CenLoRA"][1]) and ours["CenLoRA"][0] == "–"  # r=1 not run for CenLoRA
        assert all(r[3:] == ["–", "–"] for r in rows[2:] if r[2] in ("paper", "diff"))  # no paper row for tiny

    data = json.loads((out / "paper_table.json").read_text())
    runs = {(r["method"], r["r"]): r for r in data["runs"]}
    assert set(runs) == {("cenlora", 2), ("splitlora", 2), ("fedlora", 2), ("splitlora", 1)}
    for (method, _r), rec in runs.items():
        assert rec["clients"] == (0 if method == "cenlora" else 2) and rec["partition"] == "contiguous"
        assert rec["data_source"] == "synthetic" and rec["local_steps"] == 2 and math.isfinite(rec["val_loss"])
        assert set(rec["scores"]) == {"raw", "tokenized"} and rec["paper"] is None
        for style, s in rec["scores"].items():
            assert s["n_mrs"] == 4 and s["num_beams"] == 2 and s["METEOR"] is None
            saved = json.loads((out / "runs" / rec["run"] / f"eval-{style}" / "scores.json").read_text())
            assert saved["refs_style"] == style
        run = out / "runs" / rec["run"]
        assert (run / "eval-raw/references.txt").read_text() != (run / "eval-tokenized/references.txt").read_text()
        assert (run / "eval-raw/predictions.txt").read_text() == (run / "eval-tokenized/predictions.txt").read_text()
        assert (out / "logs" / f"{rec['run']}.train.log").is_file()
    # The recipe's settings reached the runs: E2E recipe file, partition, aggregation, rank.
    cfg = json.loads((out / "runs/tiny-splitlora-r1/config.json").read_text())
    assert cfg["lora"]["alpha"] == 32 and cfg["train"]["seed"] == 110 and cfg["fed"]["aggregate_every"] == 2
    assert cfg["lora"]["r"] == 1 and cfg["split"]["cut"] == 3 and cfg["runtime"]["order"] == "round_robin"
    # The r=1 and r=2 SplitLoRA runs trained different adapters.
    assert runs[("splitlora", 1)]["val_loss"] != runs[("splitlora", 2)]["val_loss"]


def test_paper_table_render_against_paper():
    """Our scorer's fractions in the paper's scale, beside the paper's cell, and the difference."""
    scores = {"BLEU": 0.6900, "NIST": 8.7000, "METEOR": 0.4600, "ROUGE_L": 0.7000, "CIDEr": 2.4500, "n_mrs": 630,
              "data_source": "e2e", "num_beams": 10}
    rec = {"run": "gpt2-splitlora-r4", "model": "gpt2", "method": "splitlora", "r": 4, "clients": 3,
           "partition": "contiguous", "data_source": "e2e", "local_steps": 8764, "loss_first": 5.0,
           "loss_last": 1.5, "val_loss": 1.6, "scores": {"tokenized": scores}}
    md = paper_table.render([rec])
    assert "SMOKE" not in md
    rows = _rows(md, "## refs_style = tokenized")
    assert rows[0] == ["model", "method", "", "r=4"]
    assert rows[2] == ["GPT2-S", "SplitLoRA", "ours", "69.00/8.7000/.4600/70.00/2.4500"]
    assert rows[3] == ["", "", "paper", "68.79/8.7259/.4572/69.84/2.4411"]
    assert rows[4] == ["", "", "diff", "+0.21/-0.0259/+.0028/+0.16/+0.0089"]
    raw = _rows(md, "## refs_style = raw")
    assert raw[2][3] == "–" and raw[3][3] == "68.79/8.7259/.4572/69.84/2.4411" and raw[4][3] == "–"
    assert _rows(md, "## Runs")[2][-1] == "–"  # no slot rates recorded
    copied = _rows(paper_table.render([{**rec, "slots": {"name": 0.9825, "near": 0.5}}]), "## Runs")
    assert copied[0][-1] == "name / near copied" and copied[2][-1] == "98.2 % / 50.0 %"


def test_paper_numbers_complete():
    assert {(m, me, r) for m in PAPER for me in PAPER[m] for r in PAPER[m][me]} == {
        (m, me, r) for m in ("gpt2", "gpt2-medium") for me in METHODS for r in (1, 2, 4, 8)}
    assert paper_scores("gpt2", "cenlora", 1) == (67.95, 8.6973, 0.4421, 68.96, 2.3412)
    assert paper_scores("gpt2-medium", "fedlora", 8) == (69.55, 8.7358, 0.4661, 71.46, 2.4980)
    assert paper_scores("tiny", "cenlora", 1) is None and paper_scores("gpt2", "cenlora", 16) is None


@pytest.mark.slow
@pytest.mark.heavy  # four runs; test_cut_rank_sweep_scores_e2e_beside_the_costs runs the sweep by default
@pytest.mark.timeout(900)
def test_cut_rank_sweep_smoke(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SPLITLORA_DATA", raising=False)
    out = tmp_path / "sweep"
    B, T = 4, 64
    argv = ["--cuts", "1,2", "--ranks", "1,2", "--steps", "2", "--clients", "1", "--batch-size", str(B),
            "--seq-len", str(T), "--out", str(out), "--data.source=synthetic", "--data.max_train_examples=200",
            "--data.max_eval_examples=8"]
    assert cut_rank_sweep.main(argv) == 0
    assert capsys.readouterr().out.count(": ran:") == 4
    md = (out / "sweep.md").read_text()
    assert "SMOKE SCALE" in md
    rows = _rows(md, "# Cut x rank sweep")
    assert rows[0] == ["cut", "r", "client LoRA params", "client MFLOP/token fwd", "client MFLOP/token fwd+bwd",
                       "client peak RSS MiB (part)", "server peak RSS MiB (part)", "bytes/step", "val loss"]
    assert [(r[0], r[1]) for r in rows[2:]] == [("1", "1"), ("1", "2"), ("2", "1"), ("2", "2")]

    tiny = PRESETS["tiny"]
    for row in json.loads((out / "sweep.json").read_text())["rows"]:
        cut, r = row["cut"], row["r"]
        assert row["client_lora_params"] == lora_parameters(tiny, cut, r) == 256 * cut * r
        f = client_flops(tiny, cut, T, r)
        assert (row["client_flops_per_token_fwd"], row["client_flops_per_token_train"]) == (f.forward, f.train)
        # Down: dL/dh fp32 (B, T, d); up: h + targets (int64) + loss mask (fp32). Padded: every step alike.
        assert row["bytes_per_step"] == 2 * B * T * tiny.n_embd * 4 + B * T * 12
        assert row["client_peak_rss_mib"] > 50 and math.isfinite(row["val_loss"]) and row["local_steps"] == 2
        # the parts' bytes: the client holds wte + wpe + cut blocks, the server the rest + its frozen head
        assert 0 < row["client_part_mib"] < row["client_peak_rss_mib"] and row["server_part_mib"] > 0
    for name in cut_rank_sweep.PLOTS:
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, name
    # Rerun: everything is found finished and nothing trains again.
    assert cut_rank_sweep.main(argv) == 0
    assert capsys.readouterr().out.count(": skipped:") == 4


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cut_rank_sweep_scores_e2e_beside_the_costs(tmp_path, monkeypatch, capsys):
    """--eval: one beam search per run, scored against both reference styles; BLEU in the table."""
    monkeypatch.delenv("SPLITLORA_DATA", raising=False)
    out = tmp_path / "sweep"
    argv = ["--cuts", "1", "--ranks", "2", "--steps", "2", "--clients", "1", "--batch-size", "4", "--seq-len", "64",
            "--out", str(out), "--eval", "--beams", "2", "--eval-max-mrs", "3", "--no-meteor",
            "--data.source=synthetic", "--data.max_train_examples=200", "--data.max_eval_examples=8"]
    assert cut_rank_sweep.main(argv) == 0
    assert "raw BLEU" in capsys.readouterr().out
    rows = _rows((out / "sweep.md").read_text(), "# Cut x rank sweep")
    assert rows[0][-6:] == ["BLEU raw", "BLEU tok", "NIST", "METEOR", "ROUGE_L", "CIDEr"]
    row = json.loads((out / "sweep.json").read_text())["rows"][0]
    raw, tok = row["scores"]["raw"], row["scores"]["tokenized"]
    assert raw["n_mrs"] == tok["n_mrs"] == 3 and raw["num_beams"] == tok["num_beams"] == 2
    assert row["bleu_raw"] == raw["BLEU"] and 0 <= raw["BLEU"] <= 1 and raw["METEOR"] is None
    run = out / "runs" / "cut1-r2"
    assert json.loads((run / "eval-tokenized" / "scores.json").read_text())["rescored"]
    texts = [(run / f"eval-{style}" / "predictions.txt").read_text() for style in ("raw", "tokenized")]
    assert texts[0] == texts[1]
    assert (out / cut_rank_sweep.BLEU_PLOT).read_bytes()[:4] == b"\x89PNG"


def test_finished_run_with_other_settings_is_not_reused(tmp_path, capsys):
    run = tmp_path / "runs" / "cut1-r1"
    run.mkdir(parents=True)
    old = build_config(["--method=splitlora", "--train.max_steps=2"]).to_dict()
    (run / "config.json").write_text(json.dumps({**old, "launch": {"world_size": 2}}))
    (run / "summary.json").write_text("{}")
    what, rc = common.train(2, ["--method=splitlora", "--train.max_steps=3"], run, tmp_path / "log")
    assert (what, rc) == ("mismatch", 3)
    assert "train.max_steps: 2 -> 3" in capsys.readouterr().err
    assert not (tmp_path / "log").exists()  # nothing was launched
    assert common.train(2, ["--method=splitlora", "--train.max_steps=2"], run, tmp_path / "log") == ("skipped", 0)


def test_argument_helpers():
    assert common.parse_int_list("1..3,8") == [1, 2, 3, 8]
    assert common.parse_int_list("4, 2,4") == [4, 2]
    with pytest.raises(ValueError):
        common.parse_int_list("a,b")
    assert common.passthrough(["--data.source", "synthetic", "--train.lr=0.1"]) == [
        "--data.source=synthetic", "--train.lr=0.1"]
    with pytest.raises(ValueError, match="section.key"):
        common.passthrough(["--bogus"])
    assert paper_table.main(["--smoke", "--methods", "nope"]) == 2
    assert cut_rank_sweep.main(["--cuts", "4"]) == 2  # the tiny preset has 4 blocks: cuts 1..3
