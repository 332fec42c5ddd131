"""Time the E2E scorer (metrics/) on the full E2E test set: total and per metric.

Scores both golden hypothesis files (630 MRs, 4,693 references) and prints wall
and CPU seconds. Not a test: the numbers depend on the machine and its load
(the load average is printed with them).

    python -m launch.bench.metrics [--data DIR] [--repeat N] [--no-meteor]

``DIR`` is the E2E data directory holding ``golden/`` (default: $SPLITLORA_DATA, then the
user cache, as ``runtime.data.locate`` finds the data).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metrics.coco import MeteorProcess, cider, rouge_l, tokenize_for_coco
from metrics.e2e import evaluate, read_hyps, read_refs
from metrics.mteval import corpus_mteval

SYSTEMS = ("test.tgen.hyps.txt", "test.template.hyps.txt")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped children: the METEOR JVMs
    return usage.ru_utime + usage.ru_stime


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float, float]:
    """(result, wall s, our CPU s, children's CPU s) of one call."""
    wall, cpu, child = time.perf_counter(), time.process_time(), _children_cpu()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu, _children_cpu() - child


def _default_data() -> Path:
    env = os.environ.get("SPLITLORA_DATA")
    if env:
        return Path(env)
    from runtime.data.locate import cache_dir

    return cache_dir()


def _row(name: str, wall: float, cpu: float, child: float = 0.0) -> str:
    return f"  {name:<34} {wall:7.2f} s wall  {cpu:6.2f} s cpu  {child:6.2f} s java cpu"


def bench_system(refs: list[list[str]], hyps: list[str], with_meteor: bool) -> tuple[list[str], float]:
    """Lines of timings for one hypothesis set, and evaluate()'s wall time."""
    lines = []
    stages: dict[str, float] = {}
    scores, total, cpu, child = _timed(lambda: evaluate(refs, hyps, meteor=with_meteor, timings=stages))
    lines.append(_row("evaluate() total (as the CLI)", total, cpu, child))
    for stage, secs in stages.items():
        if stage != "total":
            lines.append(f"    stage {stage:<28} {secs:7.2f} s wall")
    # each metric alone, one after the other (no overlap with METEOR)
    _, wall, cpu, _ = _timed(lambda: corpus_mteval(refs, hyps))
    lines.append(_row("BLEU + NIST (one shared pass)", wall, cpu))
    (gts, res), wall, cpu, _ = _timed(lambda: tokenize_for_coco(refs, hyps))
    lines.append(_row("PTB tokenisation (for the 3 below)", wall, cpu))
    _, wall, cpu, _ = _timed(lambda: rouge_l(gts, res))
    lines.append(_row("ROUGE_L", wall, cpu))
    _, wall, cpu, _ = _timed(lambda: cider(gts, res))
    lines.append(_row("CIDEr", wall, cpu))
    if with_meteor:
        child0, start = _children_cpu(), time.perf_counter()
        proc = MeteorProcess()
        proc.score({0: ["a b"]}, {0: ["a b"]})  # returns once the JVM has loaded its paraphrase table
        ready = time.perf_counter()
        proc.score(gts, res)
        done = time.perf_counter()
        proc.close()  # reaped here, so its CPU time is counted now
        lines.append(f"  {'METEOR JVM start (until ready)':<34} {ready - start:7.2f} s wall")
        lines.append(f"  {'METEOR scoring':<34} {done - ready:7.2f} s wall")
        lines.append(_row("METEOR alone (start + scoring)", done - start, 0.0, _children_cpu() - child0))
    lines.append("  scores: " + ", ".join(f"{k} {v:.4f}" if v is not None else f"{k} n/a" for k, v in scores.items()))
    return lines, total


def main(argv: list[str] | None = None) -> int:
    """Entry point: print the timing table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=_default_data(), help="E2E data dir containing golden/")
    parser.add_argument("--repeat", type=int, default=1, help="repeat the whole measurement N times")
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR")
    args = parser.parse_args(argv)
    golden = args.data / "golden"
    if not (golden / "test.refs.txt").is_file():
        print(f"error: {golden}/test.refs.txt not found (set --data or SPLITLORA_DATA)", file=sys.stderr)
        return 2
    with_meteor = not args.no_meteor and shutil.which("java") is not None
    refs = read_refs(golden / "test.refs.txt")
    print(f"E2E test set: {len(refs)} MRs, {sum(map(len, refs))} references; {os.cpu_count()} CPUs")
    totals: dict[str, list[float]] = {system: [] for system in SYSTEMS}
    for rep in range(args.repeat):
        for system in SYSTEMS:
            load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
            print(f"\n[{system}] run {rep + 1}/{args.repeat}, load average {load}", flush=True)
            lines, total = bench_system(refs, read_hyps(golden / system), with_meteor)
            totals[system].append(total)
            print("\n".join(lines), flush=True)
    print("\nevaluate() wall time, best of runs: " + ", ".join(f"{s} {min(t):.1f} s" for s, t in totals.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
