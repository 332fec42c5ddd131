"""The report of ``launch/gpu_check.sh``: OUT/report.md + OUT/report.json.

Reads what the script's steps left in OUT: ``env.json`` (the machine), ``tests.xml`` (the
CUDA tests, JUnit), ``bench/report.json`` (``launch.bench``: CenLoRA vs SplitLoRA over 1..4
clients on the device, fp32 vs bf16 cut), ``serving/report.json`` (``launch.bench.serving``:
sequential vs batched server over 1..4 clients sharing the device) and ``decode.json`` (``launch.bench.decode``: beam
search, ours vs transformers). A missing input is reported as missing, not guessed.

    python -m launch.gpu_report OUT [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

# Targets of the CUDA issue, checked against the measured figures.
SPLIT_VS_CEN_MAX = 1.10  # SplitLoRA (1 client) step time / CenLoRA's, same examples
FOUR_CLIENT_SPEEDUP_MIN = 3.0  # 4 clients' tokens/s / 1 client's (with a batched server)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def read_tests(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    root = ET.parse(path).getroot()
    cases = []
    for case in root.iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
        name = case.get("name")
        if name is None:  # pytest's entry for the test it was running when interrupted (SIGTERM)
            name, outcome = "(the test running when the check was stopped)", "interrupted"
        cases.append({"name": name, "time_s": float(case.get("time") or 0.0), "outcome": outcome})
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped",
                                                                 "interrupted")}
    return {"counts": counts, "cases": cases}


def bench_figures(bench: dict[str, Any] | None) -> dict[str, Any] | None:
    """Ratios and per-rank memory from launch.bench's report tree."""
    if not bench:
        return None
    scaling = {(s["method"], s["n_clients"]): s for s in bench.get("scaling", [])}
    cen1, split1 = scaling.get(("cenlora", 1)), scaling.get(("splitlora", 1))
    split4 = scaling.get(("splitlora", 4))
    runs = []
    for r in bench.get("runs", []):
        ranks = r["memory"]["ranks"]
        runs.append({"id": r["id"], "tokens_per_s": r["tokens_per_s"], "step_ms_median": r["step_ms"]["median"],
                     "phases_ms_median": {k: v["median"] for k, v in r["groups_ms"].items()},
                     "cuda_peak_mib": {k: (v or {}).get("cuda_peak_mib") for k, v in ranks.items()},
                     "cpu_rss_mib": {k: (v or {}).get("cpu_rss_mib") for k, v in ranks.items()},
                     "cut_up_bytes": r["cut"]["up_bytes"], "cut_down_bytes": r["cut"]["down_bytes"]})
    split_vs_cen = split1["step_ms_median"] / cen1["step_ms_median"] if cen1 and split1 else None
    speedup4 = split4["tokens_per_s"] / split1["tokens_per_s"] if split4 and split1 else None
    return {"split_over_cen_step_time_1_client": split_vs_cen, "splitlora_4_over_1_tokens_per_s": speedup4,
            "runs": runs, "cut_dtype": bench.get("cut_dtype"), "failed_jobs": bench.get("failed_jobs", []),
            "client_backends": bench.get("client_backends", {})}


def serving_figures(serving: dict[str, Any] | None) -> dict[str, Any] | None:
    """launch.bench.serving's rows, and the most clients' batched tokens/s over one sequential client's."""
    if not serving:
        return None
    rows = {(r["mode"], r["n_clients"]): r for r in serving["runs"]}
    most = max(n for _, n in rows)
    one, batched = rows.get(("sequential", 1)), rows.get(("batched", most))
    return {"runs": [{k: r[k] for k in ("mode", "n_clients", "tokens_per_s", "server_busy", "step_ms_median")}
                     for r in serving["runs"]],
            "most_clients": most, "batched_most_over_1_tokens_per_s":
                batched["tokens_per_s"] / one["tokens_per_s"] if one and batched and most > 1 else None,
            "failed_jobs": serving.get("failed_jobs", [])}


def build(out: Path, seconds: float | None) -> dict[str, Any]:
    bench = bench_figures(read_json(out / "bench" / "report.json"))
    stopped = (out / "stopped.txt").read_text().splitlines() if (out / "stopped.txt").is_file() else []
    return {"env": read_json(out / "env.json"), "seconds": seconds, "stopped": stopped,
            "tests": read_tests(out / "tests.xml"),
            "bench": bench, "serving": serving_figures(read_json(out / "serving" / "report.json")),
            "decode": read_json(out / "decode.json"),
            "targets": {"split_over_cen_max": SPLIT_VS_CEN_MAX, "four_client_speedup_min": FOUR_CLIENT_SPEEDUP_MIN,
                        "batched_server": True}}


def _f(x: float | None, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def render(rep: dict[str, Any]) -> str:
    env, tests, bench, decode = rep["env"] or {}, rep["tests"], rep["bench"], rep["decode"]
    lines = ["# CUDA path check (launch/gpu_check.sh)", "",
             f"Device **{env.get('device', '?')}**; GPUs: {', '.join(env.get('gpus') or []) or 'none'}; "
             f"torch {env.get('torch')}, CUDA {env.get('cuda')}, Python {env.get('python')}; "
             f"nvidia-smi: {env.get('nvidia_smi') or '–'}. Whole check: {_f(rep['seconds'], '.0f')} s.", ""]
    stopped = rep.get("stopped", [])
    lines += [f"- **{x.removeprefix('gpu_check: ')}**" for x in stopped] + [""] * bool(stopped)
    lines += ["## CUDA tests (tests/test_cuda.py)", ""]
    if tests is None:
        lines += ["missing: no tests.xml", ""]
    else:
        c = tests["counts"]
        lines += [f"{c['passed']} passed, {c['failed']} failed, {c['error']} errors, {c['skipped']} skipped"
                  + (f", {c['interrupted']} interrupted." if c["interrupted"] else "."), "",
                  "| test | outcome | s |", "| --- | --- | ---: |"]
        lines += [f"| {t['name']} | {t['outcome']} | {t['time_s']:.1f} |" for t in tests["cases"]] + [""]
    lines += ["## Training benchmark (launch.bench; details in bench/report.md)", ""]
    if bench is None:
        lines += ["missing: no bench/report.json", ""]
    else:
        lines += ["| run | tokens/s | step ms median | peak CUDA MiB per rank | cut up / down bytes |",
                  "| --- | ---: | ---: | --- | ---: |"]
        for r in bench["runs"]:
            mem = ", ".join(f"{k}: {_f(v, '.0f')}" for k, v in r["cuda_peak_mib"].items())
            lines.append(f"| {r['id']} | {r['tokens_per_s']:.0f} | {r['step_ms_median']:.1f} | {mem} | "
                         f"{r['cut_up_bytes']:.0f} / {r['cut_down_bytes']:.0f} |")
        ratio, speed = bench["split_over_cen_step_time_1_client"], bench["splitlora_4_over_1_tokens_per_s"]
        lines += ["", f"- SplitLoRA (1 client) / CenLoRA step time: **{_f(ratio)}** (target ≤ {SPLIT_VS_CEN_MAX}: "
                  f"{'met' if ratio is not None and ratio <= SPLIT_VS_CEN_MAX else 'not met'}).",
                  f"- SplitLoRA tokens/s, 4 clients / 1 client, sequential server: **{_f(speed)}**.",
                  *[f"- failed, not in the table: {x}" for x in bench["failed_jobs"]]]
        backends = bench.get("client_backends") or {}
        if backends:
            lines.append("- client group (NCCL only where each client has a GPU of its own): "
                         + ", ".join(f"{k} {v}" for k, v in backends.items()) + ".")
        lines.append("")
    lines += serving_lines(rep.get("serving"))
    lines += ["## Beam-10 decoding (launch.bench.decode)", ""]
    if decode is None:
        lines += ["missing: no decode.json", ""]
    else:
        for r in decode["results"]:
            ours, hf = r["ours"], r["transformers"]
            lines.append(f"- {r['prompts']} prompts ({r['prompt_end']}): ours {ours['tokens'] / ours['wall_s']:.1f} "
                         f"tokens/s, transformers {hf['tokens'] / hf['wall_s']:.1f} tokens/s; outputs equal for "
                         f"{r['equal_outputs']}/{r['prompts']} prompts.")
        lines.append("")
    return "\n".join(lines)


def serving_lines(serving: dict[str, Any] | None) -> list[str]:
    lines = ["## Server scaling (launch.bench.serving; details in serving/report.md)", ""]
    if serving is None:
        return lines + ["missing: no serving/report.json", ""]
    lines += ["| clients | mode | tokens/s | server busy | step ms median |", "| ---: | --- | ---: | ---: | ---: |"]
    lines += [f"| {r['n_clients']} | {r['mode']} | {r['tokens_per_s']:.0f} | {r['server_busy']:.0%} | "
              f"{r['step_ms_median']:.1f} |" for r in serving["runs"]]
    x, n = serving["batched_most_over_1_tokens_per_s"], serving["most_clients"]
    met = "met" if x is not None and n >= 4 and x >= FOUR_CLIENT_SPEEDUP_MIN else "not met"
    return lines + ["", f"- Batched server, {n} clients / sequential, 1 client, tokens/s: **{_f(x)}** "
                        f"(target with 4 clients ≥ {FOUR_CLIENT_SPEEDUP_MIN}: {met}).",
                    *[f"- failed, not in the table: {x}" for x in serving["failed_jobs"]], ""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launch.gpu_report", description=__doc__.split("\n")[0])
    ap.add_argument("out", help="the directory launch/gpu_check.sh wrote")
    ap.add_argument("--seconds", type=float, default=None, help="wall time of the whole check")
    a = ap.parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(a.out)
    rep = build(out, a.seconds)
    (out / "report.json").write_text(json.dumps(rep, indent=2))
    (out / "report.md").write_text(render(rep))
    print(f"gpu_report: {out / 'report.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
