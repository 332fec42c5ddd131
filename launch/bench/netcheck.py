"""The link model held against real shaped links: ``launch/bench/netsim.py``'s prediction beside the
time a run measures under ``launch/netlab.py`` at several link rates.

    sudo python -m launch.bench.netcheck --rates 0,50,10,2 --out runs/netcheck -- --train.max_steps 20

For each method (``--methods``) the same ``launch.train`` job runs once per rate, every node in
its own namespace, each client's uplink and downlink shaped to the rate (0: unshaped, the
baseline; it must come first). From the unshaped run's bytes (per client step: ``bytes_up`` /
``bytes_down``; per aggregation: the payload) netsim predicts the time each link adds
(serialisation only: round-trip time cannot be emulated here, so the profile's RTT is 0);
the measured extra is the shaped run's training wall time minus the unshaped one's. With
``--eval.every N`` among the job's arguments the table adds the training time to a target
validation loss (the best every rate reaches), measured beside the unshaped run's time to it
plus netsim's link time up to that step; the validations' own time is left out of every figure
(their traffic is not training's). Writes ``netcheck.json`` and ``netcheck.md`` into ``--out``.
Needs root (as netlab).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from launch import netlab
from launch.bench import netsim
from launch.bench.report import eval_pauses, read_jsonl, val_curve, val_targets, val_to_target

METHOD_ARGS = {"splitlora": ["--method=splitlora"], "splitlora-u": ["--method=splitlora", "--split.shape=u"],
               "fedlora": ["--method=fedlora"]}


def bytes_of(summary: dict[str, Any]) -> dict[str, float]:
    """Per client step (up, down) and per aggregation (payload per client) bytes of a finished run."""
    clients = summary["clients"].values()
    steps = summary["n_clients"] * summary["local_steps"]
    rounds = sum(c["aggregation_rounds"] for c in clients)
    return {"up": summary["bytes_up"] / steps, "down": summary["bytes_down"] / steps,
            "payload": sum(c["aggregation_bytes"] for c in clients) / max(rounds, 1)}


def parse_rate(spec: str) -> tuple[float, float]:
    """``R`` (R Mbit/s each way) or ``UP/DOWN`` -> (up, down) Mbit/s; 0 = unshaped."""
    try:
        parts = [float(x) for x in spec.split("/")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or any(x < 0 for x in parts) or (len(parts) == 2 and 0 in parts):
        raise ValueError(f"a rate is R or UP/DOWN Mbit/s (both > 0), got {spec!r}")
    return (parts[0], parts[-1])


def link_name(rate: tuple[float, float]) -> str:
    up, down = rate
    return "unshaped" if up == 0 else (f"{up:g}" if up == down else f"{up:g}/{down:g}")


def link_cost_of(summary: dict[str, Any], rate: float | tuple[float, float], every: int,
                 shape: str) -> netsim.LinkCost:
    """netsim's link cost of the run of ``summary`` (its bytes) on ``rate`` Mbit/s (each way, or
    (up, down); 0: none), RTT 0."""
    up, down = rate if isinstance(rate, tuple) else (rate, rate)
    if up <= 0:
        return netsim.LinkCost(0.0, 0.0, every)
    b = bytes_of(summary)
    profile = netsim.LinkProfile(f"{up:g}/{down:g} Mbit/s", up, down, 0.0)
    return netsim.link_cost(profile, summary["method"], summary["n_clients"], b["up"], b["down"], b["payload"],
                            every, shape=shape)


def predicted_extra_s(summary: dict[str, Any], method: str, rate: float | tuple[float, float], every: int,
                      shape: str) -> float:
    """netsim's link seconds for the whole run of ``summary`` on ``rate`` Mbit/s, RTT 0."""
    return link_cost_of(summary, rate, every, shape).whole_run(summary["local_steps"])


def one_run(name: str, rate: tuple[float, float], n_nodes: int, train_args: list[str], out: Path) -> dict[str, Any]:
    lab = netlab.Lab(n_nodes)
    try:
        lab.up([rate] * (n_nodes - 1))
        args = [*train_args, f"--out.dir={out / 'runs'}", f"--out.name={name}"]
        codes = netlab.run(lab, args, out / "logs" / name, timeout=1800)
    finally:
        lab.close()
    if any(codes):
        raise SystemExit(f"netcheck: {name} failed (node exit codes {codes}); logs in {out / 'logs' / name}")
    return json.loads((out / "runs" / name / "summary.json").read_text())


def to_val_target(curve: list[dict[str, float]], base_curve: list[dict[str, float]], target: float | None,
                  cost: netsim.LinkCost) -> tuple[float | None, float | None]:
    """Training seconds to the validation ``target`` over the link (``curve``), and the unshaped run's
    (``base_curve``) plus netsim's link time up to that step; None where not reached (or no target)."""
    if target is None:
        return None, None
    hit, base_hit = val_to_target(curve, target), val_to_target(base_curve, target)
    return None if hit is None else hit[0], None if base_hit is None else base_hit[0] + cost.up_to(base_hit[1])


def method_rows(label: str, method: str, shape: str, every: int,
                runs: list[tuple[tuple[float, float], dict[str, Any], list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """One method's rows: per rate (the unshaped run first) its training wall (evaluations during
    training left out), the link's measured and predicted extra and, with ``eval.every``, the
    training time to a target validation loss (the best every rate reaches), measured beside the
    unshaped run's time to it plus netsim's link time up to that step."""
    curves = {(label, rate): val_curve(recs) for rate, _, recs in runs}
    target = val_targets(curves).get(label)
    (_, base, base_recs) = runs[0]

    def train_wall(summary: dict[str, Any], recs: list[dict[str, Any]]) -> float:
        return summary["wall_s"] - sum(sec for _, sec in eval_pauses(recs))

    rows = []
    for rate, summary, recs in runs:
        measured, predicted = to_val_target(curves[(label, rate)], curves[(label, runs[0][0])], target,
                                            link_cost_of(base, rate, every, shape))
        rows.append({"method": label, "rate": list(rate), "link": link_name(rate), "wall_s": train_wall(summary, recs),
                     "measured_extra_s": train_wall(summary, recs) - train_wall(base, base_recs),
                     "predicted_extra_s": predicted_extra_s(base, method, rate, every, shape), "bytes": bytes_of(base),
                     "val_target": target, "to_val_target_s": measured, "to_val_target_predicted_s": predicted})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    val = any(r.get("val_target") is not None for r in rows)
    lines = ["| method | link (Mbit/s, up/down) | training wall (s) | measured extra (s) | netsim extra (s) "
             "| measured / netsim |" + (" to target val loss: measured (s) | unshaped + netsim (s) |" if val else ""),
             "|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if val else "")]

    def s(x: float | None) -> str:
        return "—" if x is None else f"{x:.1f}"

    for r in rows:
        ratio = f"{r['measured_extra_s'] / r['predicted_extra_s']:.2f}" if r["predicted_extra_s"] > 0 else "—"
        lines.append(f"| {r['method']} | {r['link']} | {r['wall_s']:.1f} | {r['measured_extra_s']:.1f} "
                     f"| {r['predicted_extra_s']:.1f} | {ratio} |"
                     + (f" {s(r.get('to_val_target_s'))} | {s(r.get('to_val_target_predicted_s'))} |" if val else ""))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, train_args = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="0,50,10,2",
                    help="per client link: R (Mbit/s each way) or UP/DOWN, comma list; 0 (unshaped) first")
    ap.add_argument("--methods", default="splitlora,fedlora", help=f"of {', '.join(METHOD_ARGS)}")
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--label", default="", help="a suffix for the method names (e.g. bf16 for a bf16 cut)")
    ap.add_argument("--every", type=int, default=5, help="fed.aggregate_every of the jobs")
    ap.add_argument("--out", default="runs/netcheck")
    a = ap.parse_args(ours)
    try:
        rates = [parse_rate(x) for x in a.rates.split(",")]
    except ValueError as exc:
        ap.error(f"--rates: {exc}")
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    if not rates or rates[0] != (0.0, 0.0):
        ap.error("--rates must start with 0 (the unshaped baseline)")
    if unknown := [m for m in methods if m not in METHOD_ARGS]:
        ap.error(f"--methods: unknown {unknown}; choose from {', '.join(METHOD_ARGS)}")
    netlab.check_tools()
    out = Path(a.out)
    rows: list[dict[str, Any]] = []
    for method in methods:
        shape = "u" if method.endswith("-u") else "vanilla"
        label = f"{method}-{a.label}" if a.label else method
        args = [*METHOD_ARGS[method], f"--fed.aggregate_every={a.every}", *train_args]
        runs = []
        for rate in rates:
            name = f"{label}-{link_name(rate).replace('/', '-')}"
            print(f"netcheck: {name}", file=sys.stderr, flush=True)
            summary = one_run(name, rate, a.clients + 1, args, out)
            runs.append((rate, summary, read_jsonl(out / "runs" / name / "metrics.jsonl")))
        rows += method_rows(label, method, shape, a.every, runs)
    (out / "netcheck.json").write_text(json.dumps({"rows": rows, "train_args": train_args, "clients": a.clients,
                                                   "every": a.every}, indent=2) + "\n")
    (out / "netcheck.md").write_text(table(rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
