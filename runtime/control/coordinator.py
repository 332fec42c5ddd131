"""Rank 0's bookkeeping for every distributed method: metrics sink, progress, completion.

Clients send their step records here (batched, ``rpc_async``) so that one process
writes ``metrics.jsonl`` and draws the progress bar; each client reports once more
when it has finished, with its own summary, and rank 0 waits for all of them.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from tqdm import tqdm

from runtime.io.telemetry import MetricsWriter
from runtime.split import server as split_server

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
        self.watchdog = None  # told when a client finishes, so its exit is not a failure
        self.dropped: dict[int, dict[str, Any]] = {}
        self.last_step: dict[int, int] = {}
        self.scores: dict[str, str] = {}  # the latest eval.every figure, beside the loss
        self.bar = tqdm(total=total_steps, desc="train", unit="step", file=sys.stderr,
                        disable=not show_progress, dynamic_ncols=True)

    def log(self, records: list[dict[str, Any]]) -> None:
        with self._lock:
            for rec in records:
                self.writer.write(rec)
                kind = rec.get("kind")
                if kind == "step" and "loss" in rec and "client" in rec:
                    self.last_loss[rec["client"]] = rec["loss"]
                    self.last_step[rec["client"]] = rec.get("step", 0)
                elif kind == "val" and rec.get("val_loss") is not None:  # eval.every
                    self.scores = {"val": f"{rec['val_loss']:.4f}"}
                elif kind == "test" and rec.get("accuracy") is not None:
                    self.scores = {"acc": f"{rec['accuracy']:.4f}"}
            steps = sum(1 for r in records if r.get("kind") == "step")
            if steps:
                self.bar.update(steps)
                if self.last_loss:
                    mean = sum(self.last_loss.values()) / len(self.last_loss)
                    self.bar.set_postfix(loss=f"{mean:.4f}", **self.scores)

    def finish(self, client: int, summary: dict[str, Any]) -> None:
        if self.watchdog is not None:
            self.watchdog.forget(f"client{client}")
        server = split_server.current()
        if server is not None:
            server.retire(client)
        with self._lock:
            self.finished[client] = summary
            self._check_done()

    def drop(self, client: int, reason: str) -> None:
        """fed.on_client_failure=continue: go on without a client that died."""
        server = split_server.current()
        if server is not None:
            server.retire(client)
        with self._lock:
            self.dropped[client] = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "reason": reason,
                                    "last_logged_step": self.last_step.get(client, 0)}
            self.writer.write({"kind": "client_dropped", "client": client, **self.dropped[client]})
            self._check_done()
        print(f"\nsplitlora: warning [server]: client {client} dropped out ({reason}); continuing without it",
              file=sys.stderr, flush=True)

    def live_clients(self) -> list[int]:
        with self._lock:
            return [c for c in range(1, self.n_clients + 1) if c not in self.dropped]

    def _check_done(self) -> None:
        if len(self.finished) + len(self.dropped) >= self.n_clients:
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


def coord_live_clients() -> list[int]:
    return _get().live_clients()


def coord_dropped_clients() -> list[int]:
    coord = _get()
    with coord._lock:
        return sorted(coord.dropped)
