"""The GPU check's CUDA tests in N pytest processes side by side, merged into one report.

A GPU is lent for minutes and the CUDA tests are mostly process start-up (each a short
torchrun job), so shards run at once on the machine's cores and GPU; their JUnit files
and logs are merged into one of each, as one pytest run would have written them.

    python -m launch.gpu_tests --shards 3 --junit OUT/tests.xml --log OUT/tests.log -- PYTEST_ARGS

Every shard is pytest with the same arguments and this module as a plugin, which keeps the
shard's share of the selected tests (every N-th, in pytest's order). A SIGTERM (the check's
time budget) is passed on to every shard once: each stops as on Ctrl-C and still writes its
JUnit file (the test it was running counts as interrupted); a shard still running 15 s later
is killed; the merge happens either way.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

KILL_AFTER_S = 15.0  # after passing SIGTERM on: enough for pytest to stop its jobs and write JUnit
SHARD_ENV = "SPLITLORA_TEST_SHARD"  # "i/n": this pytest runs shard i (0-based) of n
NO_TESTS = 5  # pytest's exit code when nothing was collected (a shard can be empty)


def shard(items: list[Any], index: int, n: int) -> list[Any]:
    """Round-robin in pytest's order: neighbours (often one test's parameters) spread out."""
    return items[index::n]


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """Plugin hook (``-p launch.gpu_tests``): keep this shard's tests only."""
    spec = os.environ.get(SHARD_ENV)
    if not spec:
        return
    index, n = (int(x) for x in spec.split("/"))
    kept = shard(items, index, n)
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept


def merge_junit(files: list[Path], out: Path) -> None:
    """One <testsuites> holding every shard's test cases (a missing file adds none)."""
    root = ET.Element("testsuites")
    for path in files:
        if path.is_file() and path.stat().st_size:
            root.extend(ET.parse(path).getroot().iter("testsuite"))
    ET.ElementTree(root).write(out, encoding="utf-8", xml_declaration=True)


class Shards:
    """The shard processes, and the budget's SIGTERM (``timeout`` may send it twice) passed on once."""

    def __init__(self, n: int, pytest_args: list[str]) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="gpu_tests-"))
        self.logs = [self.work / f"shard{i}.log" for i in range(n)]
        self.xmls = [self.work / f"shard{i}.xml" for i in range(n)]
        self.kill_at: float | None = None
        self.procs: list[subprocess.Popen] = []
        signal.signal(signal.SIGTERM, self.stop)
        for i in range(n):
            cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", "-p",
                   "launch.gpu_tests", *pytest_args, f"--junitxml={self.xmls[i]}"]
            with open(self.logs[i], "w") as fh:
                # Own sessions: a group-wide SIGTERM reaches each shard once, from ``stop``; a second
                # one during pytest's interrupt handling could cost the shard its JUnit file.
                self.procs.append(subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                                   env={**os.environ, SHARD_ENV: f"{i}/{n}"}))

    def stop(self, signum: int, _frame: object) -> None:
        if self.kill_at is None:
            self.kill_at = time.monotonic() + KILL_AFTER_S
            for p in self.procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)

    def wait(self) -> list[int]:
        while any(p.poll() is None for p in self.procs):
            time.sleep(0.2)
            if self.kill_at is not None and time.monotonic() > self.kill_at:  # a shard that ignores it
                for p in self.procs:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGKILL)
        return [p.returncode for p in self.procs]

    def merge(self, junit: Path, log: Path) -> None:
        merge_junit(self.xmls, junit)
        with open(log, "w") as out:
            for i, (path, p) in enumerate(zip(self.logs, self.procs)):
                out.write(f"== shard {i + 1}/{len(self.procs)}, exit {p.returncode} ==\n{path.read_text()}\n")


def overall(codes: list[int]) -> int:
    """The run's exit code: the first failure; an empty shard is no failure unless all are empty."""
    failed = [c for c in codes if c not in (0, NO_TESTS)]
    if failed:
        return failed[0]
    return NO_TESTS if all(c == NO_TESTS for c in codes) else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=2, help="pytest processes side by side (>= 1)")
    ap.add_argument("--junit", type=Path, required=True, help="the merged JUnit file")
    ap.add_argument("--log", type=Path, required=True, help="the shards' output, one after another")
    args = ap.parse_args(argv[:split])
    if args.shards < 1:
        ap.error("--shards must be >= 1")
    shards = Shards(args.shards, argv[split + 1:])
    code = overall(shards.wait())
    shards.merge(args.junit, args.log)
    print(f"gpu_tests: {args.shards} shards, exit {code}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
