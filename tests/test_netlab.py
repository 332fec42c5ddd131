"""Every party on its own address (launch/netlab.py): three network namespaces on a bridge, one
torchrun each, no interface variable set; a shaped client link really limits its cut traffic,
a cut link ends the job with a clear message, and nothing of the lab is left behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from tests.torchrun_util import FAST, REPO

pytestmark = pytest.mark.slow


def _lab_possible() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if not shutil.which("ip") or not shutil.which("tc"):
        return "needs iproute2 (ip, tc)"
    probe = subprocess.run(["ip", "netns", "add", "slprobe"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"network namespaces unavailable: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", "slprobe"], capture_output=True)
    return None


REASON = _lab_possible()
skip_without_lab = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def _netlab(tmp_path, lab_args: list[str], train_args: list[str], timeout: float = 300):
    cmd = [sys.executable, "-m", "launch.netlab", "--nodes=3", f"--logs={tmp_path / 'logs'}", *lab_args, "--",
           *FAST, f"--out.dir={tmp_path}", "--out.name=run", *train_args]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - t0


def _leftovers(stderr: str) -> list[str]:
    """This lab's namespaces and links still present (its tag is in the bridge's name, slbr<tag>)."""
    tag = stderr.split(" on slbr", 1)[1].split(";", 1)[0]
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return [w for w in (names + links).split() if w.startswith((f"sl{tag}", f"slbr{tag}"))]


@skip_without_lab
def test_three_nodes_on_their_own_addresses_with_a_shaped_client(tmp_path):
    proc, _ = _netlab(tmp_path, ["--links=5/5,0/0"], ["--train.max_steps=4"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = "".join(p.read_text() for p in (tmp_path / "logs").iterdir())
    assert "network interface eth0" in logs  # picked by the runtime: no variable was set
    config = json.loads((tmp_path / "run/config.json").read_text())
    assert config["launch"]["network"]["ifname"] == "eth0" and config["runtime"]["rpc_channels"] == "basic"
    steps = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r.get("kind") == "step"]

    def wire(client: int, way: str) -> tuple[float, float]:
        mine = [r for r in steps if r["client"] == client]
        measured = sum(r["time"][f"cut_{way}"] for r in mine)
        return measured, sum(r[f"bytes_{way}"] for r in mine) * 8 / 5e6  # at 5 Mbit/s

    for way in ("up", "down"):  # each direction's time in its own phase (not in the next message's)
        shaped, unshaped = wire(1, way), wire(2, way)
        # The cut phases are derived by subtracting server times from the round trip, which can
        # hide a little of the transfer: allow 15 % below bytes / rate.
        assert shaped[0] >= 0.85 * shaped[1], (way, shaped)
        assert unshaped[0] < 0.3 * unshaped[1], (way, unshaped)  # the same bytes on an unshaped link
    assert not _leftovers(proc.stderr)


@skip_without_lab
def test_a_cut_client_link_ends_every_node_with_the_cause(tmp_path):
    proc, took = _netlab(tmp_path, ["--link-down=2:20"], ["--train.max_steps=2000", "--runtime.rpc_timeout=30"])
    assert proc.returncode != 0 and "node exit codes [1, 1, 1]" in proc.stderr, proc.stderr[-2000:]
    server, _, cut_off = ((tmp_path / "logs" / f"node{k}.log").read_text() for k in range(3))
    assert "client 2 failed: client2 is unreachable" in server  # each side names the cause
    assert "the server is unreachable" in cut_off
    assert took < 20 + 30 + 40, took  # the cut, the RPC timeout, start-up and teardown: no hang
    assert not _leftovers(proc.stderr)


@skip_without_lab
@pytest.mark.heavy
def test_a_node_that_never_starts_ends_the_others_at_the_rendezvous_timeout(tmp_path):
    from launch.netlab import RDZV_TIMEOUT

    proc, took = _netlab(tmp_path, ["--absent=2"], ["--train.max_steps=4"])
    assert proc.returncode != 0 and "node exit codes [1, 1, 0]" in proc.stderr, proc.stderr[-2000:]
    assert took < RDZV_TIMEOUT + 60, took
    assert not _leftovers(proc.stderr)


@skip_without_lab
@pytest.mark.heavy
def test_a_five_second_link_flap_is_survived_with_nothing_lost(tmp_path):
    proc, _ = _netlab(tmp_path, ["--link-down=2:25", "--flap=5"], ["--train.max_steps=300"])
    assert proc.returncode == 0 and "node 2's link is up again" in proc.stderr, proc.stderr[-2000:]
    steps = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    mine = [r for r in steps if r.get("kind") == "step" and r["client"] == 2]
    assert [r["step"] for r in mine] == list(range(1, 301))  # every step, once
    # A step (or, if the outage fell there, an aggregation) waited it out (TCP retransmits).
    waited = [r["step_time"] for r in mine] + [r["time"] for r in steps if r.get("kind") == "aggregate"]
    assert max(waited) >= 4.0
    assert not _leftovers(proc.stderr)


@skip_without_lab
@pytest.mark.heavy
def test_the_servers_link_cut_ends_every_node_naming_the_servers_network(tmp_path):
    proc, took = _netlab(tmp_path, ["--link-down=0:25"], ["--train.max_steps=2000", "--runtime.rpc_timeout=30",
                                                          "--fed.on_client_failure=continue"])
    assert "node exit codes [1, 1, 1]" in proc.stderr, proc.stderr[-2000:]
    server, first, second = ((tmp_path / "logs" / f"node{k}.log").read_text() for k in range(3))
    assert "no client is reachable" in server and "this node's network may be down" in server
    assert "dropped out" not in server  # not mistaken for one client's failure under continue
    assert "the server is unreachable" in first and "the server is unreachable" in second
    assert took < 25 + 30 + 40, took
    assert not _leftovers(proc.stderr)


@skip_without_lab
@pytest.mark.heavy
def test_resume_after_a_link_cut_equals_the_uninterrupted_run(tmp_path):
    from safetensors.torch import load_file

    from tests.torchrun_util import torchrun

    train = ["--train.max_steps=100", "--ckpt.every=20", "--runtime.order=round_robin", "--runtime.rpc_timeout=30"]
    proc, _ = _netlab(tmp_path, ["--link-down=2:22"], train)
    assert proc.returncode != 0, proc.stderr[-2000:]
    done = int((tmp_path / "run/ckpt/latest").read_text().strip().removeprefix("step_"))
    assert 0 < done < 100
    cmd = [sys.executable, "-m", "launch.netlab", "--nodes=3", f"--logs={tmp_path / 'logs2'}", "--",
           f"--resume={tmp_path / 'run'}"]
    resumed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole = torchrun(3, train, tmp_path, "whole")
    assert whole.rc == 0, whole.stderr[-2000:]
    a = load_file(str(tmp_path / "run/model/lora.safetensors"))
    b = load_file(str(whole.run_dir / "model/lora.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_link_profiles_are_parsed_per_client():
    from launch.netlab import parse_links

    assert parse_links(20, "", 3) == [(20, 20)] * 3
    assert parse_links(0, "100/20,10/50", 2) == [(100.0, 20.0), (10.0, 50.0)]
    with pytest.raises(ValueError, match="needs 3 UP/DOWN pairs"):
        parse_links(0, "100/20,10/50", 3)


def test_netcheck_predicts_from_the_unshaped_runs_bytes():
    """launch.bench.netcheck's prediction is netsim's model of the baseline's bytes: SplitLoRA on one
    client pair at 8 Mbit/s with RTT 0 is the pipelined rounds plus, per aggregation, the ring
    all-reduce and the pipeline's refill; FedLoRA only the all-reduce; unshaped nothing."""
    from launch.bench.netcheck import bytes_of, predicted_extra_s

    clients = {"1": {"aggregation_rounds": 2, "aggregation_bytes": 2e6},
               "2": {"aggregation_rounds": 2, "aggregation_bytes": 2e6}}
    split = {"method": "splitlora", "n_clients": 2, "local_steps": 10, "bytes_up": 20e6, "bytes_down": 10e6,
             "clients": clients}
    assert bytes_of(split) == {"up": 1e6, "down": 0.5e6, "payload": 1e6}
    gated, overlapped = 0.5e6 * 8 / 8e6, 1e6 * 8 / 8e6  # the download inside the server's gate, the upload
    per_round = max(2 * gated, gated + overlapped)  # the two clients pipeline
    refill = min(overlapped, gated)  # after each aggregation's barrier
    ring = 2 * (2 - 1) * (0.5e6 * 8 / 8e6)  # 2(N-1) chunks of payload / N
    assert predicted_extra_s(split, "splitlora", 8.0, 5, "vanilla") == pytest.approx(
        10 * per_round + 2 * (ring + refill))
    fed = {**split, "method": "fedlora"}
    assert predicted_extra_s(fed, "fedlora", 8.0, 5, "vanilla") == pytest.approx(2 * ring)
    assert predicted_extra_s(split, "splitlora", 0.0, 5, "vanilla") == 0.0
    # An asymmetric link: the upload at 4 Mbit/s, the download at 16.
    gated, overlapped = 0.5e6 * 8 / 16e6, 1e6 * 8 / 4e6
    asym = 10 * max(2 * gated, gated + overlapped) + 2 * (2 * (0.5e6 * 8 / 4e6) + min(overlapped, gated))
    assert predicted_extra_s(split, "splitlora", (4.0, 16.0), 5, "vanilla") == pytest.approx(asym)


def test_netcheck_rates():
    from launch.bench.netcheck import link_name, parse_rate

    assert parse_rate("0") == (0.0, 0.0) and parse_rate("10/50") == (10.0, 50.0) and parse_rate("20") == (20.0, 20.0)
    assert [link_name(parse_rate(x)) for x in ("0", "5", "10/50")] == ["unshaped", "5", "10/50"]
    for bad in ("10/0", "-1", "1/2/3", "fast"):
        with pytest.raises(ValueError, match="UP/DOWN"):
            parse_rate(bad)


def test_bench_link_rates_start_unshaped():
    from launch.bench.links import job_name, parse_rates
    from launch.bench.report import RunSpec

    assert parse_rates("20,0,10/50") == [(0.0, 0.0), (20.0, 20.0), (10.0, 50.0)]  # the baseline once, first
    assert job_name(RunSpec("splitlora", 2, shape="u"), (10.0, 50.0)) == "splitlora-n2-u-link-10-50"


@skip_without_lab
@pytest.mark.heavy
def test_the_latency_report_measures_over_emulated_links(tmp_path):
    """launch.bench --netlab: SplitLoRA again, unshaped and at 5 Mbit/s per client; the report holds
    the link's measured and predicted time and the cut phases, each at least its bytes / rate."""
    from launch.bench.latency import main

    out = tmp_path / "report"
    rc = main(["--out", str(out), "--methods", "splitlora", "--clients", "2", "--steps", "6", "--warmup", "1",
               "--batch", "2", "--seq-len", "64", "--eval-examples", "0", "--no-plots", "--netlab", "5",
               "--net.profile", "lan", "--timeout", "300"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    rows = {r["link"]: r for r in report["links"]}
    assert set(rows) == {"unshaped", "5"} and report["settings"]["netlab"] == "5"
    five = rows["5"]
    assert five["measured_extra_s"] > 0 and five["predicted_extra_s"] > 0
    act = 2 * 64 * 64 * 4  # the tiny preset's (B, T, d) fp32 activations: the gradient down, + ids and mask up
    assert five["cut_down_ms"] >= 0.85 * 1e3 * act * 8 / 5e6, five
    assert five["cut_up_ms"] >= 0.85 * 1e3 * act * 8 / 5e6, five
    assert rows["unshaped"]["cut_down_ms"] < 0.3 * five["cut_down_ms"]
    # the same loss curve (round-robin order) reached later over the slow link
    assert five["target_loss"] == rows["unshaped"]["target_loss"]
    assert five["to_target_s"] > rows["unshaped"]["to_target_s"] and five["to_target_predicted_s"] > 0
    assert "## Measured over emulated links" in (out / "report.md").read_text()


def _records(t0: float, val_losses: list[float], step_s: float, eval_s: float) -> list[dict]:
    """Two clients' steps 1..4 of ``step_s`` each, a validation after steps 2 and 4 that pauses both."""
    recs, t = [], t0
    for step in range(1, 5):
        t += step_s
        recs += [{"kind": "step", "client": c, "step": step, "t": t, "step_time": step_s, "loss": 5.0 - step}
                 for c in (1, 2)]
        if step % 2 == 0:
            t += eval_s
            recs.append({"kind": "val", "client": 1, "step": step, "t": t, "eval_s": eval_s,
                         "val_loss": val_losses[step // 2 - 1]})
    return recs


def test_training_time_leaves_the_validations_out():
    from launch.bench.report import _curve, eval_pauses, val_curve, val_targets, val_to_target

    recs = _records(100.0, [3.0, 2.0], step_s=1.0, eval_s=10.0)
    curve = _curve([r for r in recs if r["kind"] == "step"], eval_pauses(recs))
    assert [c["elapsed_s"] for c in curve] == pytest.approx([1.0, 2.0, 3.0, 4.0])  # 10-s pauses gone
    vals = val_curve(recs)
    assert [(v["step"], v["val_loss"]) for v in vals] == [(2, 3.0), (4, 2.0)]
    assert [v["elapsed_s"] for v in vals] == pytest.approx([2.0, 4.0])
    # The target is the best level every run reaches: here 2.5 (the slower run's best).
    other = val_curve(_records(0.0, [2.5, 2.6], step_s=2.0, eval_s=0.5))
    assert val_targets({("job", 0): vals, ("job", 5): other, ("plain", 0): []}) == {"job": 2.5}
    assert val_to_target(vals, 2.5) == (pytest.approx(4.0), 4) and val_to_target(other, 2.5) == (pytest.approx(4.0), 2)
    assert val_to_target(vals, 1.0) is None


def test_netcheck_rows_time_to_a_validation_target():
    from launch.bench.netcheck import link_cost_of, method_rows

    clients = {"1": {"aggregation_rounds": 2, "aggregation_bytes": 2e6},
               "2": {"aggregation_rounds": 2, "aggregation_bytes": 2e6}}
    base = {"method": "splitlora", "n_clients": 2, "local_steps": 4, "bytes_up": 8e6, "bytes_down": 4e6,
            "clients": clients, "wall_s": 4.0 + 20.0}  # 4 s of steps, 2 validations of 10 s
    slow = {**base, "wall_s": 12.0 + 1.0}  # 12 s of steps over the link, 2 validations of 0.5 s
    runs = [((0.0, 0.0), base, _records(0.0, [3.0, 2.0], 1.0, 10.0)),
            ((8.0, 8.0), slow, _records(0.0, [3.0, 2.0], 3.0, 0.5))]
    unshaped, shaped = method_rows("split", "splitlora", "vanilla", 2, runs)
    assert unshaped["measured_extra_s"] == 0.0 and shaped["measured_extra_s"] == pytest.approx(8.0)
    assert shaped["wall_s"] == pytest.approx(12.0) and shaped["val_target"] == 2.0
    assert shaped["to_val_target_s"] == pytest.approx(12.0)  # step 4 at 3 s per step
    cost = link_cost_of(base, (8.0, 8.0), 2, "vanilla")
    assert shaped["to_val_target_predicted_s"] == pytest.approx(4.0 + cost.up_to(4))
    assert unshaped["to_val_target_predicted_s"] == pytest.approx(4.0)
