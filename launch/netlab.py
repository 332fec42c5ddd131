"""An emulated cluster on one machine: every node in a network namespace of its own, with its own
address on a private bridge and shaped links, one torchrun per node.

    sudo python -m launch.netlab --nodes 3 --link 100 -- --method splitlora --train.max_steps 20
    sudo python -m launch.netlab --nodes 4 --links 100/20,10/50,5/5 -- --config configs/first-run.yaml

Node 0 (the server's rank 0) and nodes 1..N-1 (one client rank each) each get a namespace, a
veth pair into one bridge and an address from 198.18.0.0/15 (the block set aside for network
benchmarks, RFC 2544): the bridge has no address and nothing is routed or NATed to or from
it. Each client node's uplink (its side of the veth) and downlink (the bridge's side) is
shaped with an ``htb`` class: ``--link MBIT`` for every client, or ``--links UP/DOWN,...`` per
client in Mbit/s (``0``: unshaped). Round-trip time cannot be emulated here (``netem`` is not
in these kernels). Every node runs ``torchrun --nnodes N --node_rank k --rdzv_backend static``
with no interface variable set, so the runtime picks each node's interface itself
(``runtime/control/netif.py``), and ``--runtime.rpc_channels basic`` so that tensor bytes cross
the shaped link instead of shared memory. ``--link-down NODE:SECONDS`` cuts a node's link
mid-run (a fault). Each node's output goes to ``--logs``. Every
namespace, veth and the bridge are removed at the end, also on failure or Ctrl-C. Needs root
and iproute2 (``ip``, ``tc``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

PREFIX = "198.18.0."
VARIABLES = ("SPLITLORA_IFNAME", "GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")


def parse_links(link: float, links: str, n_clients: int) -> list[tuple[float, float]]:
    """(up, down) Mbit/s per client; 0 = unshaped."""
    if links:
        pairs = [tuple(float(x) for x in item.split("/")) for item in links.split(",")]
        if len(pairs) != n_clients or any(len(p) != 2 for p in pairs):
            raise ValueError(f"--links needs {n_clients} UP/DOWN pairs (one per client node), got {links!r}")
        return [(p[0], p[1]) for p in pairs]
    return [(link, link)] * n_clients


def sh(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"netlab: {' '.join(cmd)} failed: {proc.stderr.strip()}")


def shape(dev: str, mbit: float, netns: str | None = None) -> None:
    """Limit ``dev``'s egress to ``mbit`` Mbit/s with one htb class."""
    if mbit <= 0:
        return
    ns = ["ip", "netns", "exec", netns] if netns else []
    sh(*ns, "tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10")
    sh(*ns, "tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate", f"{mbit}mbit",
       "ceil", f"{mbit}mbit")


class Lab:
    """The bridge, namespaces and veth pairs of one emulated cluster; ``close`` removes them all."""

    def __init__(self, n_nodes: int) -> None:
        tag = f"{os.getpid() % 100000}"
        self.bridge = f"slbr{tag}"
        self.names = [f"sl{tag}n{k}" for k in range(n_nodes)]
        self.host_ends = [f"sl{tag}v{k}" for k in range(n_nodes)]
        self.created: list[tuple[str, str]] = []

    def up(self, links: list[tuple[float, float]]) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        self.created.append(("link", self.bridge))
        sh("ip", "link", "set", self.bridge, "up")
        for k, (ns, host) in enumerate(zip(self.names, self.host_ends)):
            sh("ip", "netns", "add", ns)
            self.created.append(("netns", ns))
            sh("ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns)
            self.created.append(("link", host))  # deleted first: the pair goes at once, not when the netns is reaped
            sh("ip", "link", "set", host, "master", self.bridge, "up")
            sh("ip", "-n", ns, "addr", "add", f"{PREFIX}{k + 1}/24", "dev", "eth0")
            # One packet per MTU from every sender: htb lets a packet through whenever its bucket is not
            # empty, so a 64 KiB segmentation-offload packet would cross a shaped link at once, ahead of its
            # rate, and delay the next packets instead (a downlink's time then shows in the wrong phase).
            # The packets a shaped downlink carries are made by the other nodes' eth0: limit them all.
            subprocess.run(["ip", "-n", ns, "link", "set", "dev", "eth0", "gso_max_size", "1514"], capture_output=True)
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            if k > 0:
                up, down = links[k - 1]
                shape("eth0", up, netns=ns)  # the client's uplink: what leaves its namespace
                shape(host, down)  # its downlink: what the bridge sends into it

    def close(self) -> list[str]:
        """Remove everything created, newest first; returns what could not be removed."""
        left = []
        for kind, name in reversed(self.created):
            cmd = ["ip", "netns", "del", name] if kind == "netns" else ["ip", "link", "del", name]
            if subprocess.run(cmd, capture_output=True).returncode != 0:
                left.append(name)
        self.created = []
        return left


RDZV_TIMEOUT = 60  # seconds the nodes wait for each other at start-up (torchrun's default: 600)


def node_command(lab: Lab, k: int, port: int, train_args: list[str]) -> list[str]:
    return ["ip", "netns", "exec", lab.names[k], sys.executable, "-m", "torch.distributed.run",
            f"--nnodes={len(lab.names)}", f"--node_rank={k}", "--nproc_per_node=1", "--rdzv_backend=static",
            f"--master_addr={PREFIX}1", f"--master_port={port}", f"--rdzv_conf=timeout={RDZV_TIMEOUT}",
            "--max_restarts=0", "-m", "launch.train",
            "--runtime.rpc_channels=basic", *train_args]


def run(lab: Lab, train_args: list[str], logs: Path, timeout: float, port: int = 29400,
        link_down: tuple[int, float] | None = None, grace: float = 90.0, absent: int | None = None,
        flap_s: float = 0.0) -> list[int]:
    """One torchrun per node; returns every node's exit code. Once a node fails the others get
    ``grace`` seconds to end on their own (what a fault does to each rank is the measurement),
    then they are ended (not when a client node fails under ``--fed.on_client_failure continue``:
    the others may finish without it). ``link_down`` (node, seconds): take that node's link down then (and
    back up ``flap_s`` seconds later, when given); ``absent``: a node that never starts (its
    exit code is reported as 0)."""
    logs.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    procs = []
    for k in range(len(lab.names)):
        if k == absent:
            procs.append((subprocess.Popen(["true"]), open(logs / f"node{k}.log", "w")))  # noqa: SIM115
            continue
        out = open(logs / f"node{k}.log", "w")  # noqa: SIM115 - closed with the process below
        procs.append((subprocess.Popen(node_command(lab, k, port, train_args), stdout=out, stderr=subprocess.STDOUT,
                                       env=env, start_new_session=True), out))
    start = time.monotonic()
    deadline = start + timeout
    survivable = "--fed.on_client_failure=continue" in train_args or any(
        a == "--fed.on_client_failure" and b == "continue" for a, b in zip(train_args, train_args[1:]))
    codes: list[int | None] = [None] * len(procs)
    link_up_at: tuple[int, float] | None = None
    try:
        while None in codes:
            if link_down is not None and time.monotonic() - start >= link_down[1]:
                sh("ip", "link", "set", lab.host_ends[link_down[0]], "down")
                print(f"netlab: node {link_down[0]}'s link is down", file=sys.stderr, flush=True)
                link_up_at = (link_down[0], time.monotonic() + flap_s) if flap_s > 0 else None
                link_down = None
            if link_up_at is not None and time.monotonic() >= link_up_at[1]:
                sh("ip", "link", "set", lab.host_ends[link_up_at[0]], "up")
                print(f"netlab: node {link_up_at[0]}'s link is up again", file=sys.stderr, flush=True)
                link_up_at = None
            for i, (p, _) in enumerate(procs):
                codes[i] = p.poll()
            failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
            # A node failed: the others end soon, unless a client may leave the run (its policy says continue).
            if failed and not (survivable and 0 not in failed):
                deadline = min(deadline, time.monotonic() + grace)
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        for i, (p, out) in enumerate(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
            codes[i] = p.returncode
            out.close()
    return [int(c) for c in codes]  # type: ignore[arg-type]


def check_tools() -> None:
    if os.geteuid() != 0:
        raise SystemExit("netlab: needs root (network namespaces, veth pairs, a bridge, tc)")
    missing = [t for t in ("ip", "tc") if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"netlab: needs iproute2: {', '.join(missing)} not found")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, train_args = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=3, help="the server's node + one node per client")
    ap.add_argument("--link", type=float, default=0.0, help="every client's up and down Mbit/s (0: unshaped)")
    ap.add_argument("--links", default="", help="per client UP/DOWN Mbit/s, comma list")
    ap.add_argument("--logs", default="runs/netlab-logs")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--absent", type=int, default=None, metavar="NODE", help="a fault: NODE never starts")
    ap.add_argument("--link-down", default="", metavar="NODE:SECONDS",
                    help="a fault: take NODE's link down SECONDS after the start")
    ap.add_argument("--flap", type=float, default=0.0, metavar="SECONDS",
                    help="with --link-down: bring the link back up after SECONDS (a link flap)")
    a = ap.parse_args(ours)
    link_down = None
    if a.link_down:
        node, seconds = a.link_down.split(":")
        link_down = (int(node), float(seconds))
        if not 0 <= link_down[0] < a.nodes:
            ap.error(f"--link-down: node {node} is not one of 0..{a.nodes - 1}")
    if a.flap and not link_down:
        ap.error("--flap needs --link-down NODE:SECONDS (when the link goes down)")
    if a.nodes < 2:
        ap.error("--nodes must be >= 2 (the server and a client)")
    links = parse_links(a.link, a.links, a.nodes - 1)
    check_tools()
    lab = Lab(a.nodes)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    codes: list[int] = []
    try:
        lab.up(links)
        print(f"netlab: {a.nodes} nodes at {PREFIX}1..{a.nodes} on {lab.bridge}; client links (up/down Mbit/s, "
              f"0 = unshaped): {links}; logs in {a.logs}", file=sys.stderr, flush=True)
        codes = run(lab, train_args, Path(a.logs), a.timeout, link_down=link_down, absent=a.absent, flap_s=a.flap)
    except KeyboardInterrupt:
        print("netlab: interrupted", file=sys.stderr)
        codes = [130]
    finally:
        left = lab.close()
        if left:
            print(f"netlab: warning: could not remove {', '.join(left)}", file=sys.stderr)
    print(f"netlab: node exit codes {codes}", file=sys.stderr, flush=True)
    return 0 if codes and all(c == 0 for c in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
