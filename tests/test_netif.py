"""The network interface a multi-node run uses: routes parsed like the kernel's, the master's own
interface, a clear error where nothing reaches the master (runtime/control/netif.py)."""

from __future__ import annotations

import pytest

from runtime.control.netif import VARIABLES, choose_interface, configure_interfaces, route_interface

# /proc/net/route as a namespace on a bridge plus a default route sees it (addresses little-endian hex).
ROUTES = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
veth1\t000012C6\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
br9\t000012C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
wg0\t000012C6\t00000000\t0001\t0\t0\t50\t00FFFFFF\t0\t0\t0
down0\t070012C6\t00000000\t0000\t0\t0\t0\tFFFFFFFF\t0\t0\t0
"""


def test_the_most_specific_up_route_wins():
    assert route_interface(ROUTES, "198.18.0.7") == "br9"  # /24 beats /16; metric 0 beats 50; down0 is down
    assert route_interface(ROUTES, "198.18.5.1") == "veth1"  # only the /16 covers it
    assert route_interface(ROUTES, "192.0.2.9") == "eth0"
    assert route_interface(ROUTES, "203.0.113.5") == "eth0"  # the default route
    assert route_interface(ROUTES.splitlines()[0] + "\n" + ROUTES.splitlines()[4], "10.0.0.1") is None


def test_choose_interface_for_loopback_own_and_remote_masters():
    local = {"127.0.0.1": "lo", "198.18.0.1": "br9"}
    assert choose_interface("127.0.0.1", ROUTES, local)[0] is None
    assert choose_interface("198.18.0.1", ROUTES, local) == ("br9", "it holds MASTER_ADDR 198.18.0.1")
    assert choose_interface("198.18.0.2", ROUTES, local)[0] == "br9"
    header_only = ROUTES.splitlines()[0] + "\n"
    with pytest.raises(RuntimeError, match=r"no network interface reaches MASTER_ADDR 198\.18\.0\.2.*SPLITLORA_IFNAME"):
        choose_interface("198.18.0.2", header_only, local)


def test_configure_interfaces_respects_what_the_user_set():
    env = {"SPLITLORA_IFNAME": "ib0", "MASTER_ADDR": "198.18.0.1", "NCCL_SOCKET_IFNAME": "ib1"}
    assert configure_interfaces(env)["ifname"] == "ib0"
    assert [env[v] for v in VARIABLES] == ["ib0", "ib0", "ib1"]  # a variable set by the user stays
    env = {"GLOO_SOCKET_IFNAME": "eth3", "MASTER_ADDR": "198.18.0.1"}
    assert configure_interfaces(env)["reason"].startswith("set by the user") and "TP_SOCKET_IFNAME" not in env
    env = {"MASTER_ADDR": "127.0.0.1"}
    assert configure_interfaces(env)["ifname"] is None and not any(v in env for v in VARIABLES)
    with pytest.raises(RuntimeError, match="does not resolve"):
        configure_interfaces({"MASTER_ADDR": "no-such-host.invalid"})
