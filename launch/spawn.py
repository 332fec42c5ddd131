"""Start a local job's ranks as plain processes, without torchrun's all-or-nothing teardown.

    python -m launch.spawn --nproc 4 -- --fed.on_client_failure continue --train.max_steps 100

torchrun's agent stops every worker as soon as one fails, which is what ``abort`` wants
but makes ``fed.on_client_failure=continue`` impossible. This launcher sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT for each process of
``python -m launch.train`` and waits for all of them; its exit code is the server's
(rank 0): the server aborts when a client fails under ``abort``, and finishes under
``continue``. Ranks that outlive ``--timeout``
are killed. On clusters, the same role is played by ``srun`` with
``launch/slurm/srun_rank_env.sh`` (see docs/clusters.md).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, rest = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, required=True, help="processes: 1 server + N clients")
    ap.add_argument("--timeout", type=float, default=0, help="kill ranks still running after this many seconds")
    a = ap.parse_args(own)
    port = str(free_port())
    procs = []
    for rank in range(a.nproc):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(a.nproc), "LOCAL_RANK": str(rank),
               "LOCAL_WORLD_SIZE": str(a.nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        procs.append(subprocess.Popen([sys.executable, "-m", "launch.train", *rest], env=env))
    deadline = time.monotonic() + a.timeout if a.timeout else None
    codes: list[int | None] = [None] * a.nproc
    while any(c is None for c in codes):
        for i, p in enumerate(procs):
            if codes[i] is None:
                codes[i] = p.poll()
        if deadline is not None and time.monotonic() > deadline:
            for i, p in enumerate(procs):
                if codes[i] is None:
                    p.kill()
                    codes[i] = p.wait()
            print(f"launch.spawn: killed ranks still running after {a.timeout:.0f}s", file=sys.stderr)
        time.sleep(0.2)
    for rank, code in enumerate(codes):
        if code:
            print(f"launch.spawn: rank {rank} exited with {code}", file=sys.stderr)
    return 0 if codes[0] == 0 else (codes[0] if codes[0] and codes[0] > 0 else 1)


if __name__ == "__main__":
    sys.exit(main())
