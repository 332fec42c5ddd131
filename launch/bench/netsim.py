"""Network simulation: what the measured traffic of a run would cost on a slower link.

Nothing here measures anything. It takes the bytes and message counts the runtime
recorded (``metrics.jsonl``) and adds the time that traffic would take on a link
profile. The result is always kept **beside** the measured time, never folded into it.

Model (stated in every report):

* Each client sits behind its own access link (``up``/``down`` Mbit/s, round-trip
  ``rtt``); the server (and, for the star all-reduce, the aggregator) has a fast link
  that is never the bottleneck. Serialisation time is ``bytes · 8 / rate``; framing,
  TCP slow start and loss are ignored, so the figures are a lower bound for a real link.
* SplitLoRA, per client step: 3 RPC round trips (``server_forward``, the distributed
  backward, ``server_step``), activations + targets + mask up, the activation gradient
  down. The server admits one client at a time from forward to step (its gate), so
  everything after the forward request — 2.5 round trips and the gradient download — lies
  on the server's critical path: ``G = 2.5·rtt + down/rate_down`` per client step. The
  upload and the first half round trip, ``O = 0.5·rtt + up/rate_up``, happen before the
  client asks for the gate, while the server serves the others, so clients pipeline: a
  round (every client one step) takes ``max(N·G, G + O)`` — with one client exactly
  ``3·rtt + up/rate_up + down/rate_down``. An aggregation is a barrier: after it every
  client uploads at once and the pipeline refills, ``min(O, (N-1)·G)`` more, counted with
  the aggregation. U-shaped split: the same 3 round trips, but half the upload (the
  gradient at the client's back end) goes up inside the gate: ``G = 2.5·rtt +
  down/rate_down + up/2/rate_up``, ``O = 0.5·rtt + up/2/rate_up``. Held against real
  shaped links (``launch/bench/netcheck.py``; docs/performance.md): within 10 % where the link
  dominates, for both shapes; an upper bound where a slow uplink overlaps the server's
  compute for the other clients (an asymmetric link, a bf16 cut). (The earlier form,
  ``N·G + O`` per round, assumed no pipelining and over-predicted by 15–20 %.)
* FedLoRA: no traffic per step.
* Aggregation (both federated methods), payload ``P`` bytes per client:
  ``ring`` (what gloo/NCCL's all_reduce does among the clients): ``2(N-1)`` steps, each
  moving ``P/N`` from a client to its neighbour through both access links (one-way
  latency ``rtt``); ``star`` (a parameter server): every client uploads ``P`` and
  downloads the average, in parallel: ``rtt + P/rate_up + P/rate_down``. One client
  sends nothing.
* CenLoRA is the centralized reference: its data already sits with the model, no link.
* The measured time already contains the loopback transfers (the cut up / cut down
  phases, milliseconds); they are not subtracted, so the sum counts them twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from runtime.split.shapes import DEFAULT_SHAPE, get_shape

# RPC round trips per client step (see the module docstring).
ROUND_TRIPS = {"splitlora": 3, "fedlora": 0, "cenlora": 0}


@dataclass(frozen=True)
class LinkProfile:
    """A client's access link: rates in Mbit/s, round-trip time in ms."""

    name: str
    up_mbps: float
    down_mbps: float
    rtt_ms: float
    note: str = ""

    @property
    def rtt_s(self) -> float:
        return self.rtt_ms / 1e3

    def up_s(self, n_bytes: float) -> float:
        """Seconds to push ``n_bytes`` up this link (serialisation only)."""
        return n_bytes * 8 / (self.up_mbps * 1e6)

    def down_s(self, n_bytes: float) -> float:
        """Seconds to pull ``n_bytes`` down this link (serialisation only)."""
        return n_bytes * 8 / (self.down_mbps * 1e6)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


# Assumed figures, not measurements: round numbers typical of each kind of link.
PROFILES = {
    "lan": LinkProfile("lan", 1000.0, 1000.0, 0.5, "gigabit Ethernet in one site"),
    "wifi": LinkProfile("wifi", 100.0, 100.0, 5.0, "a good 802.11ac/ax link to a wired server"),
    "4g": LinkProfile("4g", 20.0, 50.0, 50.0, "LTE: 20 Mbit/s up, 50 Mbit/s down, 50 ms RTT"),
}


def parse_profile(spec: str) -> LinkProfile:
    """``lan`` | ``wifi`` | ``4g`` | ``custom:<Mbps>:<rtt_ms>`` (symmetric rate)."""
    spec = spec.strip()
    if spec in PROFILES:
        return PROFILES[spec]
    parts = spec.split(":")
    if parts[0] == "custom" and len(parts) == 3:
        try:
            rate, rtt = float(parts[1]), float(parts[2])
        except ValueError:
            rate, rtt = -1.0, -1.0
        if rate > 0 and rtt >= 0 and math.isfinite(rate) and math.isfinite(rtt):
            return LinkProfile(spec, rate, rate, rtt, "user-defined, symmetric")
    raise ValueError(f"unknown net profile {spec!r}: use {', '.join(PROFILES)} or custom:<Mbps>:<rtt_ms>")


def parse_profiles(specs: Iterable[str]) -> list[LinkProfile]:
    """Several profiles; each item may itself be a comma list. Duplicates are dropped."""
    out: dict[str, LinkProfile] = {}
    for item in specs:
        for spec in item.split(","):
            if spec.strip():
                p = parse_profile(spec)
                out[p.name] = p
    return list(out.values())


def split_step_link_s(p: LinkProfile, up_bytes: float, down_bytes: float,
                      shape: str = DEFAULT_SHAPE) -> tuple[float, float]:
    """(G, O): the link seconds of one client step inside the server's gate and before it."""
    # The share of the upload the server waits for (U: the gradient at the back end's input, half).
    gated_up = up_bytes * get_shape(shape).gated_upload
    gated = (ROUND_TRIPS["splitlora"] - 0.5) * p.rtt_s + p.down_s(down_bytes) + p.up_s(gated_up)
    overlapped = 0.5 * p.rtt_s + p.up_s(up_bytes - gated_up)
    return gated, overlapped


def split_round_link_s(p: LinkProfile, n_clients: int, up_bytes: float, down_bytes: float,
                       shape: str = DEFAULT_SHAPE) -> float:
    """Link time one SplitLoRA round (every client one step) adds to the run, clients pipelined."""
    if n_clients < 1:
        return 0.0
    gated, overlapped = split_step_link_s(p, up_bytes, down_bytes, shape)
    return max(n_clients * gated, gated + overlapped)


def split_refill_link_s(p: LinkProfile, n_clients: int, up_bytes: float, down_bytes: float,
                        shape: str = DEFAULT_SHAPE) -> float:
    """The pipeline's refill after a barrier (an aggregation): every client uploads at once."""
    if n_clients < 2:
        return 0.0
    gated, overlapped = split_step_link_s(p, up_bytes, down_bytes, shape)
    return min(overlapped, (n_clients - 1) * gated)


def allreduce_s(p: LinkProfile, n_clients: int, payload_bytes: float, algo: str = "ring") -> float:
    """Link time of one aggregation round among ``n_clients`` (payload per client)."""
    if n_clients <= 1 or payload_bytes <= 0:
        return 0.0
    if algo == "ring":
        chunk = payload_bytes / n_clients
        return 2 * (n_clients - 1) * (p.rtt_s + max(p.up_s(chunk), p.down_s(chunk)))
    if algo == "star":
        return p.rtt_s + p.up_s(payload_bytes) + p.down_s(payload_bytes)
    raise ValueError(f"all-reduce model must be ring or star, got {algo!r}")


def aggregations_before(step: int, every: int) -> int:
    """Aggregation rounds finished before the loss of ``step`` (1-based) was computed."""
    return (step - 1) // every


@dataclass
class LinkCost:
    """Simulated link seconds of a run: per round of client steps and per aggregation."""

    per_round_s: float
    per_aggregation_s: float
    every: int

    def up_to(self, step: int) -> float:
        """Link time accumulated when the loss of ``step`` is known."""
        return step * self.per_round_s + aggregations_before(step, self.every) * self.per_aggregation_s

    def whole_run(self, total_steps: int) -> float:
        # The runtime also aggregates after the last step when it is not a multiple of `every`.
        n_agg = math.ceil(total_steps / self.every)
        return total_steps * self.per_round_s + n_agg * self.per_aggregation_s


def link_cost(p: LinkProfile, method: str, n_clients: int, up_bytes: float, down_bytes: float,
              agg_payload: float, every: int, algo: str = "ring", shape: str = DEFAULT_SHAPE) -> LinkCost:
    """The link model of one method, from its measured bytes per step and per aggregation."""
    if method == "cenlora":
        return LinkCost(0.0, 0.0, every)
    if method != "splitlora":
        return LinkCost(0.0, allreduce_s(p, n_clients, agg_payload, algo), every)
    refill = split_refill_link_s(p, n_clients, up_bytes, down_bytes, shape)
    return LinkCost(split_round_link_s(p, n_clients, up_bytes, down_bytes, shape),
                    allreduce_s(p, n_clients, agg_payload, algo) + refill, every)


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what exists so far)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def time_to_target(xs: Sequence[float], losses: Sequence[float], target: float) -> float | None:
    """First x at which the loss is at or below ``target``; None when never reached."""
    for x, loss in zip(xs, losses):
        if loss <= target:
            return x
    return None
