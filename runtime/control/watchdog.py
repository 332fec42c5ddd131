"""Liveness checks between the server and the clients, so that no rank waits for ever.

Under torchrun, a rank that exits makes the agent stop the others; launched any other
way (srun, by hand), nothing would. Each rank therefore pings its peers over RPC: the
server pings every client still training, each client pings the server. A ping to a
dead process fails within ``timeout`` (usually at once: the connection is closed), and
``on_failure`` decides: abort this rank, or (server, ``fed.on_client_failure=continue``)
drop the client and go on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch.distributed.rpc as rpc


def ping() -> bool:
    """Executed on the peer: proves its RPC agent is alive."""
    return True


class Watchdog(threading.Thread):
    def __init__(self, peers: list[str], on_failure: Callable[[str, BaseException], None], *,
                 interval: float = 2.0, timeout: float = 10.0) -> None:
        super().__init__(name="splitlora-watchdog", daemon=True)
        self.peers = list(peers)
        self.on_failure = on_failure
        self.interval = interval
        self.timeout = timeout
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def forget(self, peer: str) -> None:
        """Stop watching a peer that finished normally (it may now exit)."""
        with self._lock:
            if peer in self.peers:
                self.peers.remove(peer)

    def stop(self) -> None:
        self._stop.set()

    def others_reachable(self, peer: str) -> bool | None:
        """Whether any watched peer but ``peer`` answers a ping now; None when there is no other.
        Every peer lost at once points at this node's own network rather than at ``peer``. The
        pings go out together, so this takes one ping timeout (at most 5 s) however many peers."""
        with self._lock:
            others = [p for p in self.peers if p != peer]
        if not others:
            return None
        futures = [rpc.rpc_async(other, ping, timeout=min(self.timeout, 5.0)) for other in others]
        answered = False
        for fut in futures:
            try:
                fut.wait()
                answered = True
            except Exception:  # noqa: BLE001 - unreachable too
                continue
        return answered

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                peers = list(self.peers)
            for peer in peers:
                if self._stop.is_set():
                    return
                try:
                    rpc.rpc_sync(peer, ping, timeout=self.timeout)
                except Exception as exc:  # noqa: BLE001 - any failure means the peer is gone
                    if self._stop.is_set():
                        return
                    with self._lock:
                        if peer not in self.peers:
                            continue
                        self.peers.remove(peer)
                    self.on_failure(peer, exc)
