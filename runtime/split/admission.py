"""Admission to the SplitLoRA server: who runs next, without a thread per waiting client.

A client's ``server_forward`` RPC does not wait inside an RPC thread: it leaves its work in
``waiting`` and gets a future back (``@rpc.functions.async_execution``), so the number of
clients is bounded by memory, not by the RPC thread pool. One server thread admits the
waiting clients one at a time — in rank order (``round_robin``) or in order of arrival
(``arrival``) — runs the admitted client's forward and completes its future; the client
then holds the server (``busy``) until its ``server_step`` calls ``leave``. The backward
and the step themselves run in RPC threads, as before.

A request that waits longer than ``timeout`` fails with TimeoutError; a client taken out
of the rotation (``retire``) fails its waiting request, if any.

``hold()`` lends the server part to something other than training (validation and decoding
through the split): it waits until no client's step is open and admits no one meanwhile, so
a validation during training (``eval.every``) never meets a half-done step or switches
dropout off under another client's forward.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from runtime.io.telemetry import now

POLL_S = 0.5  # how often the server thread checks waiting requests for their timeout


@dataclass
class _Request:
    run: Callable[[float], Any] | None  # run(wait_seconds) -> result, on the server thread once admitted
    future: torch.futures.Future
    payload: Any = None  # batched serving: what the batch runner needs from this request
    since: float = field(default_factory=now)


class Admission:
    def __init__(self, clients: list[int], order: str, timeout: float) -> None:
        self.order = order
        self.timeout = timeout
        self.cond = threading.Condition()
        self.active = list(clients)  # ranks still training, in round-robin order
        self.busy: int | None = None  # client holding the server between forward and step
        self.turn = 0  # index into self.active (round_robin only)
        self.waiting: dict[int, _Request] = {}  # at most one request per client
        self.closed = False
        self.running = False  # the admission thread is running admitted work (outside the lock)
        self.held = False  # hold(): the part is lent out, nobody is admitted
        self.thread = threading.Thread(target=self._serve, name="split-server-admission", daemon=True)
        self.thread.start()

    def submit(self, client: int, run: Callable[[float], Any] | None, payload: Any = None) -> torch.futures.Future:
        """Queue ``run`` (or ``payload``, batched) for ``client``; the future completes with its
        result (or its error)."""
        future: torch.futures.Future = torch.futures.Future()
        with self.cond:
            if client not in self.active:
                future.set_exception(RuntimeError(f"client {client} is not (or no longer) registered with the server"))
                return future
            if client in self.waiting:
                future.set_exception(RuntimeError(f"client {client} already has a request waiting for the server"))
                return future
            self.waiting[client] = _Request(run, future, payload)
            self.cond.notify_all()
        return future

    def leave(self, client: int) -> None:
        """``client`` finished its step: the server is free for the next one."""
        with self.cond:
            if self.busy == client:
                self.busy = None
                if self.active and self.active[self.turn % len(self.active)] == client:
                    self.turn = (self.turn + 1) % len(self.active)
            self.cond.notify_all()

    def retire(self, client: int) -> bool:
        """Take ``client`` out of the rotation; True if it held the server (its open step is dropped)."""
        with self.cond:
            held = self.busy == client
            if held:
                self.busy = None
            request = self.waiting.pop(client, None)
            if request is not None:
                request.future.set_exception(RuntimeError(f"client {client} was dropped by the server"))
            if client in self.active:
                idx = self.active.index(client)
                self.active.pop(idx)
                if idx < self.turn:
                    self.turn -= 1
                self.turn = self.turn % len(self.active) if self.active else 0
            self.cond.notify_all()
        return held

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """The server part for other work: waits (up to ``timeout``) until no step is open, then
        admits no client until the block ends."""
        with self.cond:
            free = self.cond.wait_for(lambda: self.closed or not (self.held or self.running or self.busy is not None),
                                      timeout=self.timeout)
            if not free:
                raise TimeoutError(f"server: the part stayed busy > {self.timeout:.0f}s (client {self.busy})")
            self.held = True
        try:
            yield
        finally:
            with self.cond:
                self.held = False
                self.cond.notify_all()

    # -- the server thread -------------------------------------------------------------
    def _next(self) -> int | None:
        if self.busy is not None or not self.waiting:
            return None
        if self.order == "arrival":
            return min(self.waiting, key=lambda c: self.waiting[c].since)
        client = self.active[self.turn % len(self.active)] if self.active else None
        return client if client in self.waiting else None

    def _expire(self) -> None:
        t = now()
        for client, request in list(self.waiting.items()):
            if t - request.since > self.timeout:
                del self.waiting[client]
                holder = f"client {self.busy} holds it" if self.busy is not None else "waiting for its turn"
                request.future.set_exception(TimeoutError(
                    f"server: client {client} waited > {self.timeout:.0f}s for the server ({holder})"))

    def _wait_s(self) -> float:
        """How long the server thread may sleep before it must look again."""
        return POLL_S

    def _take(self) -> list[tuple[int, _Request]]:
        """Under the lock: the requests to run now (sequential: the next client, who then holds
        the server until ``leave``); [] when nobody may run yet."""
        client = self._next()
        if client is None:
            return []
        self.busy = client
        return [(client, self.waiting.pop(client))]

    def _run(self, taken: list[tuple[int, _Request]]) -> None:
        """Outside the lock: run what ``_take`` chose and complete its future(s)."""
        (client, request), = taken
        assert request.run is not None
        try:
            result = request.run(now() - request.since)
        except BaseException as exc:  # noqa: BLE001 - the client gets the error through its future
            self.leave(client)
            request.future.set_exception(exc)
            return
        request.future.set_result(result)

    def _serve(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.closed or (not self.held and self._take_ready()),
                                   timeout=self._wait_s())
                if self.closed:
                    for request in self.waiting.values():
                        request.future.set_exception(RuntimeError("the server is shutting down"))
                    self.waiting.clear()
                    return
                self._expire()
                taken = [] if self.held else self._take()
                self.running = bool(taken)
            if taken:
                try:
                    self._run(taken)
                finally:
                    with self.cond:
                        self.running = False
                        self.cond.notify_all()

    def _take_ready(self) -> bool:
        return self._next() is not None
