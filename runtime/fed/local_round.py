"""One aggregation round's collective among the clients a rank hosts.

Strategies aggregate with ``flat_allreduce_sum(tensors, ctx.group)``: one client, one
all_reduce. When a rank hosts several participants of a round, each runs its strategy's
``aggregate`` on a thread of its own and its ``ctx.group`` is a ``Seat`` of one
``LocalRound``: the participants' flat buffers meet there, the rank sums them in client
order (deterministic, whatever the threads' timing) and makes the one all_reduce over the
client group that every rank makes, and each participant reads the same sum. A *listener*
seat (the rank's copy of the global state, ``runtime/fed/hosted.py``) contributes zeros and
receives the result. With one seat and no listener there is no thread and no copy: the
collective is exactly the one-client-per-rank one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist

from runtime.aggregate import on_backend_device

T = TypeVar("T")


class LocalRound:
    def __init__(self, group: dist.ProcessGroup | None, n_seats: int, listeners: frozenset[int] = frozenset(),
                 timeout: float | None = None) -> None:
        self.group, self.n_seats, self.listeners = group, n_seats, listeners
        self._arrive = threading.Barrier(n_seats, action=self._reduce, timeout=timeout)
        self._leave = threading.Barrier(n_seats, timeout=timeout)
        self._inbox: list[torch.Tensor | None] = [None] * n_seats
        self._sum: torch.Tensor | None = None

    def seat(self, index: int) -> Seat:
        return Seat(self, index)

    def allreduce_sum(self, seat: int, flat: torch.Tensor) -> torch.Tensor:
        """Seat ``seat``'s flat buffer (n,) in; the sum over every seat of every rank (n,) out."""
        self._inbox[seat] = torch.zeros_like(flat) if seat in self.listeners else flat
        self._arrive.wait()  # the last to arrive runs _reduce
        out = self._sum if self.n_seats == 1 else self._sum.clone()  # type: ignore[union-attr]
        self._leave.wait()  # nobody overwrites the inbox before every seat has its copy
        return out  # type: ignore[return-value]

    def _reduce(self) -> None:
        total = self._inbox[0]
        for other in self._inbox[1:]:  # client order: the same sum whatever the threads' timing
            total = total + other  # type: ignore[operator]
        total = on_backend_device(total, self.group)  # type: ignore[arg-type]
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=self.group)
        self._sum = total.to(self._inbox[0].device)  # type: ignore[union-attr]
        self._inbox = [None] * self.n_seats

    def run(self, calls: list[Callable[[Seat], T]]) -> list[T]:
        """Run call i with seat i (on threads when there are several); the first failure is raised."""
        if len(calls) != self.n_seats:
            raise ValueError(f"{len(calls)} calls for {self.n_seats} seats")
        if self.n_seats == 1:
            return [calls[0](self.seat(0))]
        results: list[T | None] = [None] * self.n_seats
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                results[i] = calls[i](self.seat(i))
            except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread
                errors.append(exc)
                self._arrive.abort()  # wake the others instead of leaving them to the timeout
                self._leave.abort()

        threads = [threading.Thread(target=work, args=(i,), name=f"aggregate-seat{i}") for i in range(self.n_seats)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
            raise (real or errors)[0]
        return results  # type: ignore[return-value]


class Seat:
    """A participant's handle on its ``LocalRound``: what its ``ctx.group`` is while it aggregates."""

    def __init__(self, local: LocalRound, index: int) -> None:
        self.local, self.index = local, index

    def allreduce_sum(self, flat: torch.Tensor) -> torch.Tensor:
        return self.local.allreduce_sum(self.index, flat)
