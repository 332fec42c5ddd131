"""The latency report: the link model (pure), and one real small ``launch.bench`` run on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launch.bench import netsim
from launch.bench.latency import parse_args, plan_jobs
from launch.bench.report import PHASE_GROUPS

# ----------------------------------------------------------------------------- link model


def test_profiles_parse_and_reject_nonsense() -> None:
    assert netsim.parse_profile("4g") == netsim.PROFILES["4g"]
    p = netsim.parse_profile("custom:8:120")
    assert (p.up_mbps, p.down_mbps, p.rtt_ms) == (8.0, 8.0, 120.0)
    assert [q.name for q in netsim.parse_profiles(["lan,wifi", "lan", "custom:10:1"])] == ["lan", "wifi", "custom:10:1"]
    for bad in ("5g", "custom:0:10", "custom:10", "custom:x:1", "custom:10:-1", "custom:inf:1"):
        with pytest.raises(ValueError, match="net profile"):
            netsim.parse_profile(bad)


def test_split_round_is_three_round_trips_plus_transfer_for_one_client() -> None:
    p = netsim.LinkProfile("t", up_mbps=8.0, down_mbps=16.0, rtt_ms=10.0)
    # 1 MB up at 8 Mbit/s = 1 s, 1 MB down at 16 Mbit/s = 0.5 s, 3 round trips of 10 ms.
    assert netsim.split_round_link_s(p, 1, 1e6, 1e6) == pytest.approx(0.03 + 1.0 + 0.5)
    # N clients pipeline: the gated part G (2.5 RTT + download) repeats per client, the upload O
    # overlaps the others' gated time: max(N G, G + O) per round; a barrier refills min(O, (N-1) G).
    G, O = 0.025 + 0.5, 0.005 + 1.0
    assert netsim.split_round_link_s(p, 4, 1e6, 1e6) == pytest.approx(4 * G)
    assert netsim.split_round_link_s(p, 2, 1e6, 1e6) == pytest.approx(G + O)  # the upload is the longer
    assert netsim.split_refill_link_s(p, 4, 1e6, 1e6) == pytest.approx(O)
    assert netsim.split_refill_link_s(p, 2, 1e6, 1e6) == pytest.approx(G)
    assert netsim.split_refill_link_s(p, 1, 1e6, 1e6) == 0.0
    # U: the same for one client; with N, half the upload (the back end's gradient) is inside the gate.
    assert netsim.split_round_link_s(p, 1, 1e6, 1e6, "u") == pytest.approx(0.03 + 1.0 + 0.5)
    assert netsim.split_round_link_s(p, 4, 1e6, 1e6, "u") == pytest.approx(4 * (0.025 + 0.5 + 0.5))


def test_allreduce_ring_and_star() -> None:
    p = netsim.LinkProfile("t", up_mbps=8.0, down_mbps=8.0, rtt_ms=10.0)
    assert netsim.allreduce_s(p, 1, 1e6) == 0.0  # one client sends nothing
    # ring: 2(N-1) hops of P/N bytes, each hop one RTT of latency (two access links)
    assert netsim.allreduce_s(p, 4, 1e6, "ring") == pytest.approx(6 * (0.01 + 0.25))
    assert netsim.allreduce_s(p, 4, 1e6, "star") == pytest.approx(0.01 + 1.0 + 1.0)
    with pytest.raises(ValueError):
        netsim.allreduce_s(p, 2, 1.0, "tree")


def test_link_cost_per_method_and_time_to_target() -> None:
    p = netsim.PROFILES["wifi"]
    assert netsim.link_cost(p, "cenlora", 2, 1e6, 1e6, 1e4, 5).whole_run(10) == 0.0
    fed = netsim.link_cost(p, "fedlora", 2, 0, 0, 1e4, 5)
    assert fed.per_round_s == 0.0 and fed.per_aggregation_s > 0
    assert fed.whole_run(11) == pytest.approx(3 * fed.per_aggregation_s)  # rounds at 5, 10 and the last step
    assert fed.up_to(6) == pytest.approx(fed.per_aggregation_s)  # the loss of step 6 follows one aggregation
    split = netsim.link_cost(p, "splitlora", 2, 1e5, 1e5, 1e4, 5)
    assert split.up_to(3) == pytest.approx(3 * split.per_round_s)
    assert netsim.smooth([4.0, 2.0, 0.0, 2.0], 2) == [4.0, 3.0, 1.0, 1.0]
    assert netsim.time_to_target([1.0, 2.0, 3.0], [5.0, 3.0, 1.0], 3.0) == 2.0
    assert netsim.time_to_target([1.0], [5.0], 3.0) is None


def test_bench_options_and_job_plan(tmp_path: Path) -> None:
    cfg = tmp_path / "b.yaml"
    cfg.write_text("clients: 2\nscaling: [1, 4]\ncut-dtypes: [fp32, bf16]\nnet.profile: [lan, 'custom:5:40']\n")
    a = parse_args(["--config", str(cfg), "--steps", "9"])
    assert a.steps == 9 and [p.name for p in a.profiles] == ["lan", "custom:5:40"]
    assert [s.run_id for s in plan_jobs(a)] == [
        "cenlora-n1", "fedlora-n1", "splitlora-n1", "cenlora-n2", "fedlora-n2", "splitlora-n2",
        "cenlora-n4", "fedlora-n4", "splitlora-n4", "splitlora-n2-bf16"]
    assert [s.run_id for s in plan_jobs(parse_args(["--clients", "2", "--methods", "splitlora", "--shapes",
                                                     "vanilla,u"]))] == ["splitlora-n2", "splitlora-n2-u"]
    cfg.write_text("clients: 2\nbogus: 1\n")
    with pytest.raises(SystemExit):
        parse_args(["--config", str(cfg)])


# ----------------------------------------------------------------------------- a real report

BATCH, SEQ, EVERY, STEPS = 2, 64, 2, 4
TINY_D, TINY_LAYERS, CUT, R = 64, 4, 3, 4  # the tiny preset; LoRA r 4 on q and v


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from launch.bench.latency import main

    out = tmp_path_factory.mktemp("bench")
    rc = main(["--out", str(out), "--clients", "2", "--steps", str(STEPS), "--warmup", "1", "--batch", str(BATCH),
               "--seq-len", str(SEQ), "--aggregate-every", str(EVERY), "--eval-examples", "0",
               "--server-threads", "1", "--client-threads", "1", "--cut-dtypes", "fp32,bf16", "--shapes", "vanilla,u",
               "--net.profile", "lan", "4g", "--decode-mrs", "2", "--decode-beams", "2", "--decode-tokens", "6",
               "--timeout", "300"])
    assert rc == 0
    return out


@pytest.mark.slow
def test_report_files_and_schema(report_dir: Path) -> None:
    for name in ("report.json", "report.md", "phases.png", "bytes.png", "scaling.png", "time_to_target.png",
                 "cut_dtype.png"):
        assert (report_dir / name).stat().st_size > 0, name
    for png in report_dir.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rep = json.loads((report_dir / "report.json").read_text())
    assert {"schema", "machine", "settings", "runs", "comparison", "scaling", "cut_dtype", "network",
            "plots"} <= set(rep)
    assert {"platform", "cpu_count", "torch", "device"} <= set(rep["machine"])
    assert rep["settings"]["threads"]["server_threads"] == 1 and rep["settings"]["threads"]["client_threads"] == 1
    assert sorted(r["id"] for r in rep["runs"]) == ["cenlora-n2", "fedlora-n2", "splitlora-n2", "splitlora-n2-bf16",
                                                   "splitlora-n2-u"]
    for r in rep["runs"]:
        assert set(r["groups_ms"]) == {g for g, _ in PHASE_GROUPS}
        assert all(set(v) == {"median", "p90", "mean"} for v in r["groups_ms"].values())
        assert r["tokens_per_s"] > 0 and r["epoch_s"] == pytest.approx(42_061 / r["examples_per_s"])
        assert all(v and v["cpu_rss_mib"] > 0 for v in r["memory"]["ranks"].values())
        assert len(r["memory"]["ranks"]) == (1 if r["method"] == "cenlora" else 3)
        assert [c["step"] for c in r["curve"]] == list(range(1, STEPS + 1))
    md = (report_dir / "report.md").read_text()
    for heading in ("## Per-phase time per client step", "## Bytes across the cut", "## Scaling",
                    "## Activation compression", "## Split shapes", "## Network simulation", "## Checks"):
        assert heading in md
    assert rep["machine"]["platform"] in md and "--runtime.server_threads=1" in md


@pytest.mark.slow
def test_phases_are_recorded_for_every_step(report_dir: Path) -> None:
    """Structure only: how well the phases cover the step time depends on load, and is a report figure."""
    rep = json.loads((report_dir / "report.json").read_text())
    for r in rep["runs"]:
        assert r["phase_sum"]["min"] > 0 and r["phase_sum"]["min"] <= r["phase_sum"]["max"], r["id"]
        assert set(r["coverage"]) and all(c > 0 for c in r["coverage"].values()), (r["id"], r["coverage"])
        lines = (report_dir / "runs" / r["dir"] / "metrics.jsonl").read_text().splitlines()
        steps = [rec for rec in map(json.loads, lines) if rec.get("kind") == "step"]
        assert steps, r["id"]
        for rec in steps:  # every step, every client: non-negative phases and a positive step time
            assert rec["step_time"] > 0 and rec["time"] and all(v >= 0 for v in rec["time"].values()), (r["id"], rec)


@pytest.mark.slow
def test_bytes_match_the_shapes(report_dir: Path) -> None:
    rep = json.loads((report_dir / "report.json").read_text())
    runs = {r["id"]: r for r in rep["runs"]}
    act = BATCH * SEQ * TINY_D
    assert runs["splitlora-n2"]["cut"]["down_bytes"] == act * 4  # fp32 activation gradient
    assert runs["splitlora-n2-bf16"]["cut"]["down_bytes"] == act * 2
    up_extra = runs["splitlora-n2"]["cut"]["up_bytes"] - act * 4  # targets (int64) + loss mask
    assert runs["splitlora-n2-bf16"]["cut"]["up_bytes"] == act * 2 + up_extra
    # U: two (B, T, d) fp32 tensors each way, nothing else
    assert runs["splitlora-n2-u"]["cut"]["up_bytes"] == runs["splitlora-n2-u"]["cut"]["down_bytes"] == 2 * act * 4
    shapes = {d["shape"]: d for d in rep["split_shapes"]}
    assert shapes["u"]["up_bytes"] == 2 * act * 4 and shapes["vanilla"]["up_bytes"] == act * 4 + up_extra
    assert runs["fedlora-n2"]["cut"]["up_bytes"] == 0
    lora = 2 * (TINY_D * R + R * TINY_D) * 4  # bytes of one block's q and v adapters
    assert runs["fedlora-n2"]["aggregation"]["up_bytes"] == TINY_LAYERS * lora
    assert runs["splitlora-n2"]["aggregation"]["up_bytes"] == CUT * lora
    assert runs["splitlora-n2"]["aggregation"]["rounds"] == STEPS // EVERY
    c = rep["comparison"]
    assert c["cut_bytes_theory_2BTd4"] == 2 * act * 4 and c["activations_vs_theory"] == 1.0
    assert 1.0 < c["bytes_vs_theory"] < 1.1 and c["ratio_split_over_cen_time"] > 0


@pytest.mark.slow
def test_network_simulation_is_kept_apart_and_ordered(report_dir: Path) -> None:
    rep = json.loads((report_dir / "report.json").read_text())
    net = rep["network"]
    assert [p["name"] for p in net["profiles"]] == ["lan", "4g"]
    res = {(x["profile"], x["run"]): x for x in net["results"]}
    assert len(res) == 2 * 5
    runs = {r["id"]: r for r in rep["runs"]}
    for (_, rid), x in res.items():
        # the measured column is the run's own clock, untouched by the profile
        assert x["measured_s_run"] == pytest.approx(runs[rid]["curve"][-1]["elapsed_s"])
        assert x["curve_x_s"][-1] == pytest.approx(x["measured_s_run"] + x["link_s_run"])
    assert res[("4g", "cenlora-n2")]["link_s_run"] == 0.0
    assert res[("4g", "fedlora-n2")]["link_s_per_round"] == 0.0 and res[("4g", "fedlora-n2")]["link_s_run"] > 0
    for rid in ("splitlora-n2", "splitlora-n2-bf16", "splitlora-n2-u"):
        assert res[("4g", rid)]["link_s_run"] > res[("lan", rid)]["link_s_run"] > 0
    assert res[("4g", "splitlora-n2-bf16")]["link_s_per_round"] < res[("4g", "splitlora-n2")]["link_s_per_round"]
    assert net["target_loss"] is not None
    for x in net["results"]:  # the default target is one every run reaches
        assert x["time_to_target_s"] == pytest.approx(x["time_to_target_measured_s"] + x["time_to_target_link_s"])


@pytest.mark.slow
def test_decoding_is_reported_per_run(report_dir: Path) -> None:
    """--decode-mrs: every run decodes after training; SplitLoRA through the split (both client ranks
    a share), with bytes and round trips per token and a link that only slows it down."""
    rep = json.loads((report_dir / "report.json").read_text())
    rows = {x["run"]: x for x in rep["decoding"]}
    assert set(rows) == {r["id"] for r in rep["runs"]}
    for rid, x in rows.items():
        split = rid.startswith("splitlora")
        assert x["through"] == ("split" if split else "whole model") and x["mrs"] == 2 and x["beams"] == 2
        assert 0 < x["tokens"] <= 2 * 6 and x["tokens_per_s"] > 0
        if split:
            assert x["shares"] == 2 and x["round_trips_per_token"] > 0
            assert x["bytes_up_per_token"] > 0 and x["bytes_down_per_token"] > 0
            assert x["link"]["4g"]["tokens_per_s"] < x["link"]["lan"]["tokens_per_s"] < x["tokens_per_s"]
        else:
            assert x["link"]["4g"]["tokens_per_s"] == x["tokens_per_s"]
    # vanilla: the server's head sends k candidates per row back, U the middle's hidden states
    assert rows["splitlora-n2"]["bytes_down_per_token"] < rows["splitlora-n2-u"]["bytes_down_per_token"]
    assert "## Decoding" in (report_dir / "report.md").read_text()


@pytest.mark.slow
def test_a_failed_job_leaves_the_others_in_the_report(report_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-render the finished runs with one more job planned (1 client) that fails: the report
    holds the finished ones, names the failed one, and the exit code says it."""
    import launch.bench.latency as bench

    def fail(method: str, nproc: int, args: list[str], out: Path, name: str, timeout: float) -> Path:
        raise bench.JobError(f"bench: {name} failed (exit 1):\nsome traceback")

    monkeypatch.setattr(bench, "run_job", fail)
    out = tmp_path / "partial"
    rc = bench.main(["--out", str(out), "--runs-dir", str(report_dir / "runs"), "--reuse", "--clients", "2",
                     "--scaling", "1", "--steps", str(STEPS), "--warmup", "1", "--batch", str(BATCH),
                     "--seq-len", str(SEQ), "--aggregate-every", str(EVERY), "--eval-examples", "0",
                     "--cut-dtypes", "fp32,bf16", "--shapes", "vanilla,u", "--no-plots"])
    assert rc == 1
    report = json.loads((out / "report.json").read_text())
    failed = [f"{m}-n1" for m in ("cenlora", "fedlora", "splitlora")]  # the plan's order
    assert report["failed_jobs"] == [f"{name} failed (exit 1):" for name in failed]
    assert {r["id"] for r in report["runs"]} == {"cenlora-n2", "fedlora-n2", "splitlora-n2", "splitlora-n2-bf16",
                                                 "splitlora-n2-u"}
    md = (out / "report.md").read_text()
    assert all(f"**failed, not in this report:** {name} failed" in md for name in failed)
