"""Which network interface the process groups and RPC use, so that a multi-node run works where
every node's hostname resolves to a loopback address (a common state of real clusters).

gloo, TensorPipe and NCCL each pick an interface on their own (gloo and TensorPipe from the
address the local hostname resolves to); when that is 127.0.x.x, the other nodes cannot
reach this one and the job dies in gloo's ``connectFullMesh``. ``SPLITLORA_IFNAME`` sets the
three variables (``GLOO_SOCKET_IFNAME``, ``TP_SOCKET_IFNAME``, ``NCCL_SOCKET_IFNAME``) to one
interface. When none of the four is set and ``MASTER_ADDR`` is not a loopback address, every
rank picks the interface that reaches ``MASTER_ADDR``: the interface holding that address on
the master's node, else the kernel's route to it (longest prefix in ``/proc/net/route``, the
rule of ``ip route get``); with no route, one clear error names the address and the variables.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
from pathlib import Path

VARIABLES = ("GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address


def route_interface(routes: str, address: str) -> str | None:
    """The interface of the most specific up route to ``address`` in ``/proc/net/route`` text
    (ties: the lowest metric, then the first listed); None if no route covers it."""
    target = int(ipaddress.IPv4Address(address))
    best: tuple[int, int, int, str] | None = None  # (-prefix length, metric, line, interface)
    for i, line in enumerate(routes.splitlines()[1:]):
        f = line.split()
        if len(f) < 8 or not int(f[3], 16) & 0x1:  # RTF_UP
            continue
        dest, mask = (socket.ntohl(int(x, 16)) for x in (f[1], f[7]))  # stored little-endian
        if target & mask != dest & mask:
            continue
        key = (-bin(mask).count("1"), int(f[6]), i, f[0])
        best = key if best is None or key < best else best
    return None if best is None else best[3]


def local_addresses() -> dict[str, str]:
    """IPv4 address -> interface name, for this host's (this namespace's) interfaces."""
    out: dict[str, str] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:  # no IPv4 address on it
                continue
            out[socket.inet_ntoa(packed[20:24])] = name
    return out


def choose_interface(master: str, routes: str, local: dict[str, str]) -> tuple[str | None, str]:
    """(interface, why) for a run whose master is at ``master`` (an IPv4 address)."""
    if ipaddress.IPv4Address(master).is_loopback:
        return None, f"MASTER_ADDR {master} is a loopback address: one host"
    if master in local:
        return local[master], f"it holds MASTER_ADDR {master}"
    name = route_interface(routes, master)
    if name is None:
        raise RuntimeError(f"no network interface reaches MASTER_ADDR {master} (no route in /proc/net/route); set "
                           f"SPLITLORA_IFNAME (or {', '.join(VARIABLES)}) to the interface the nodes share")
    return name, f"the kernel's route to MASTER_ADDR {master}"


def configure_interfaces(env: os._Environ | dict[str, str] | None = None) -> dict[str, str | None]:
    """Set the three variables in ``env`` (default: this process's) before any group starts; returns
    what was chosen and why, for the log and config.json."""
    env = os.environ if env is None else env
    given = env.get("SPLITLORA_IFNAME", "")
    if given:
        for var in VARIABLES:
            env.setdefault(var, given)
        return {"ifname": given, "reason": "SPLITLORA_IFNAME"}
    if any(env.get(var) for var in VARIABLES):
        return {"ifname": None, "reason": "set by the user: " + ", ".join(f"{v}={env[v]}" for v in VARIABLES
                                                                          if env.get(v))}
    master = env.get("MASTER_ADDR", "127.0.0.1")
    try:
        address = socket.gethostbyname(master)
    except OSError as exc:
        raise RuntimeError(f"MASTER_ADDR {master} does not resolve ({exc}); give the master's address") from None
    routes = Path("/proc/net/route").read_text() if Path("/proc/net/route").is_file() else "header\n"
    name, why = choose_interface(address, routes, local_addresses())
    if name is not None:
        for var in VARIABLES:
            env[var] = name
    return {"ifname": name, "reason": why}
