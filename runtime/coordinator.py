"""Rank 0's bookkeeping for every distributed method: metrics sink, progress, completion.

Clients send their step records here (batched, ``rpc_async``) so that one process
writes ``metrics.jsonl`` and draws the progress bar; each client reports once more
when it has finished, with its own summary, and rank 0 waits for all of them.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from tqdm import tqdm

from runtime import split_server
from runtime.telemetry import MetricsWriter

_COORD: Coordinator | None = None


class Coordinator:
    def __init__(self, writer: MetricsWriter, n_clients: int, total_steps: int, show_progress: bool = True) -> None:
        self.writer = writer
        self.n_clients = n_clients
        self.finished: dict[int, dict[str, Any]] = {}
        self.all_done = threading.Event()
        self._lock = threading.Lock()
        self.last_loss: dict[int, float] = {}
        self.on_checkpoint = None  # callback(step) installed by the server role
        self.bar = tqdm(total=total_steps, desc="train", unit="step", file=sys.stderr,
                        disable=not show_progress, dynamic_ncols=True)

    def log(self, records: list[dict[str, Any]]) -> None:
        with self._lock:
            for rec in records:
                self.writer.write(rec)
                if "loss" in rec and "client" in rec:
                    self.last_loss[rec["client"]] = rec["loss"]
            steps = sum(1 for r in records if r.get("kind") == "step")
            if steps:
                self.bar.update(steps)
                if self.last_loss:
                    mean = sum(self.last_loss.values()) / len(self.last_loss)
                    self.bar.set_postfix(loss=f"{mean:.4f}")

    def finish(self, client: int, summary: dict[str, Any]) -> None:
        server = split_server._SERVER
        if server is not None:
            server.retire(client)
        with self._lock:
            self.finished[client] = summary
            if len(self.finished) == self.n_clients:
                self.all_done.set()

    def checkpoint(self, step: int) -> None:
        if self.on_checkpoint is not None:
            self.on_checkpoint(step)

    def close(self) -> None:
        self.bar.close()


def install(coord: Coordinator | None) -> None:
    global _COORD
    _COORD = coord


def _get() -> Coordinator:
    if _COORD is None:
        raise RuntimeError("no coordinator is running on this worker")
    return _COORD


def coord_log(records: list[dict[str, Any]]) -> None:
    _get().log(records)


def coord_finish(client: int, summary: dict[str, Any]) -> None:
    _get().finish(client, summary)


def coord_checkpoint(step: int) -> None:
    """All clients have saved step ``step``: save the server's state, then mark it complete."""
    _get().checkpoint(step)
