"""Batched decoding on the server (``split.server_batching``): the decoding steps of several
clients' sessions that wait at once run as one forward of the server part
(``models/decode_batch.py``: the linear layers over all sessions' new positions, attention
per session over its own cache).

A batch closes when every open session has a step waiting or ``window_s`` after its first
step, whichever comes first: one decoding client is served at once, several wait for each
other at most the window. Each request waits in its own RPC thread (a decoding step is one
round trip; a client has one session open at a time, so at most one thread per client waits
here, within ``runtime.rpc_threads``); the first waiting thread that finds the batch due runs it
for all of them. A prompt (more than one new position) is not batched: ``ServerDecoding`` runs
it alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StepRequest:
    """One session's decoding step as received: ``args`` for the batch's runner; ``result`` or
    ``error`` once its batch ran."""

    args: Any
    since: float = field(default_factory=time.monotonic)
    result: Any = None
    error: BaseException | None = None
    done: bool = False


class DecodeBatcher:
    """Gathers concurrent ``StepRequest``s into batches run by ``run(requests)``, which sets each
    request's result or error. ``expected()``: how many steps make a full batch (open sessions)."""

    def __init__(self, run: Callable[[list[StepRequest]], None], expected: Callable[[], int],
                 window_s: float) -> None:
        self.run, self.expected, self.window_s = run, expected, window_s
        self.pending: list[StepRequest] = []
        self.busy = False
        self.cond = threading.Condition()
        self.sizes: list[int] = []  # every batch's size, in order (telemetry and tests)

    def submit(self, args: Any) -> Any:
        """Queue one step; return its result once its batch ran (or raise its error)."""
        request = StepRequest(args)
        with self.cond:
            self.pending.append(request)
            self.cond.notify_all()
            while not request.done:
                if not self.busy and self.pending and self._due():
                    batch, self.pending, self.busy = self.pending, [], True
                    break
                self.cond.wait(self._wait_s())
            else:
                return self._outcome(request)
        try:
            self.run(batch)
        except BaseException as exc:  # the runner failed as a whole: every request of the batch gets it
            for r in batch:
                r.error = r.error or exc
        finally:
            with self.cond:
                self.sizes.append(len(batch))
                self.busy = False
                for r in batch:
                    r.done = True
                self.cond.notify_all()
        return self._outcome(request)

    def poke(self) -> None:
        """Re-check the waiting steps (a session opened or closed: a full batch is now smaller)."""
        with self.cond:
            self.cond.notify_all()

    def _due(self) -> bool:
        return len(self.pending) >= self.expected() or time.monotonic() - self.pending[0].since >= self.window_s

    def _wait_s(self) -> float | None:
        if self.busy or not self.pending:
            return None  # woken when the running batch ends or a step arrives
        return max(1e-4, self.pending[0].since + self.window_s - time.monotonic())

    @staticmethod
    def _outcome(request: StepRequest) -> Any:
        if request.error is not None:
            raise request.error
        return request.result
