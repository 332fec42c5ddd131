"""Admission.hold(): validation and decoding through the split never overlap a client's step."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from runtime.split.admission import Admission
from runtime.split.batching import BatchAdmission, Work


def _held_at(adm: Admission, events: list[str]) -> threading.Thread:
    def take() -> None:
        with adm.hold():
            events.append("held")
            time.sleep(0.2)
            events.append("released")

    t = threading.Thread(target=take)
    t.start()
    return t


def test_hold_waits_for_the_open_step_and_admits_no_one_meanwhile():
    events: list[str] = []
    adm = Admission([1, 2], "arrival", timeout=30.0)
    try:
        first = adm.submit(1, lambda wait: events.append("forward 1"))
        first.wait()  # client 1 now holds the server until its step's leave()
        holder = _held_at(adm, events)
        time.sleep(0.2)
        assert events == ["forward 1"]  # the hold waits for client 1's open step
        adm.leave(1)
        time.sleep(0.05)
        second = adm.submit(2, lambda wait: events.append("forward 2"))
        second.wait()
        holder.join()
        assert events == ["forward 1", "held", "released", "forward 2"]  # client 2 waited for the release
    finally:
        adm.close()


def test_hold_waits_for_a_running_batch():
    events: list[str] = []

    def slow(works):
        events.append("batch start")
        time.sleep(0.3)
        events.append("batch end")
        return [w.h.clone() for w in works], {"update": True, "time": {}}

    adm = BatchAdmission([1], "arrival", 30.0, slow, window_s=0.0)
    try:
        fut = adm.submit_work(1, Work(torch.tensor(1.0), torch.zeros(1), torch.zeros(1), True))
        time.sleep(0.1)
        _held_at(adm, events).join()
        fut.wait()
        assert events == ["batch start", "batch end", "held", "released"]
    finally:
        adm.close()


def test_hold_gives_up_after_the_timeout_with_the_holder_named():
    adm = Admission([1], "arrival", timeout=0.3)
    try:
        adm.submit(1, lambda wait: None).wait()  # client 1 holds the server and never leaves
        with pytest.raises(TimeoutError, match="client 1"):
            with adm.hold():
                pass
    finally:
        adm.close()
