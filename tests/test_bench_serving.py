"""The server scaling study: its arithmetic on known records, and one real pair of runs."""

import json

import pytest

from launch.bench import serving as bench_serving

PHASES = {p: 0.01 for p in bench_serving.PHASES}


def _write_run(d, steps, batches=()):
    d.mkdir(parents=True)
    lines = [json.dumps(r) for r in [*steps, *batches]]
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    summary = {"n_clients": 2, "loss_last": 1.5, "server_memory": {"cpu_rss_mib": 500.0},
               "clients": {"1": {"memory": {"cpu_rss_mib": 300.0}}, "2": {"memory": {"cpu_rss_mib": 320.0}}}}
    (d / "summary.json").write_text(json.dumps(summary))


def _step(client, step, t, tokens=100, fwd=0.1, bwd=0.2, opt=0.05):
    return {"kind": "step", "client": client, "step": step, "t": t, "step_time": 1.0, "tokens": tokens,
            "server_opt_compute": opt, "time": {**PHASES, "server_fwd": fwd, "server_bwd": bwd}}


def test_sequential_throughput_and_busy_fraction(tmp_path):
    # warmup step 1 is left out; counted: steps 2, 3 of two clients, window [10, 14]
    steps = [_step(c, 1, 9.0) for c in (1, 2)] + [_step(1, 2, 11.0), _step(2, 2, 12.0), _step(1, 3, 13.0),
                                                 _step(2, 3, 14.0)]
    _write_run(tmp_path / "r", steps)
    out = bench_serving.analyze(tmp_path / "r", warmup=1)
    assert out["counted_steps"] == 4 and out["window_s"] == pytest.approx(4.0)
    assert out["tokens_per_s"] == pytest.approx(400 / 4.0)
    assert out["server_busy"] == pytest.approx(4 * 0.35 / 4.0)
    assert out["server_rss_mib"] == 500.0 and out["client_rss_mib_max"] == 320.0
    assert "clients_per_batch" not in out


def test_batched_busy_counts_each_batch_once(tmp_path):
    steps = [_step(c, s, 10.0 + s) for c in (1, 2) for s in (2, 3)]  # window [11, 13]
    batches = [{"kind": "server_batch", "t": t, "clients": [1, 2], "rows": [4, 4],
                "time": {"server_fwd": 0.2, "server_bwd": 0.3, "server_opt": 0.1}} for t in (11.5, 12.5, 20.0)]
    _write_run(tmp_path / "r", steps, batches)
    out = bench_serving.analyze(tmp_path / "r", warmup=1)
    assert out["server_busy"] == pytest.approx(2 * 0.6 / 2.0)  # the batch at t=20 is outside the window
    assert out["clients_per_batch"] == 2 and out["rows_per_batch"] == 8


# CI runs the study end to end in the GPU check's dry run; here with the heavy cases.
@pytest.mark.slow
@pytest.mark.heavy
def test_a_real_pair_of_runs_gives_a_report(tmp_path):
    out = tmp_path / "serving"
    rc = bench_serving.main(["--clients", "2", "--steps", "3", "--warmup", "1", "--batch", "2", "--seq-len", "64",
                             "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    rows = {r["mode"]: r for r in report["runs"]}
    assert set(rows) == {"sequential", "batched"}
    assert rows["batched"]["clients_per_batch"] == 2.0  # round_robin: both clients in every batch
    assert all(r["tokens_per_s"] > 0 and 0 < r["server_busy"] for r in rows.values())
    assert (out / "serving.png").stat().st_size > 0 and "| 2 | batched |" in (out / "report.md").read_text()
