"""The seed lock: another thread's reseed never lands inside a seeded draw."""

from __future__ import annotations

import threading
import time

import torch

from models.seeding import reseed, seeded


def test_a_reseed_in_another_thread_waits_for_the_seeded_draws_to_finish():
    with seeded(1):
        want = [torch.rand(8), torch.rand(8)]
    stop = threading.Event()
    reseeds = 0

    def hammer() -> None:
        nonlocal reseeds
        while not stop.is_set():
            reseed(2)
            reseeds += 1

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        while reseeds < 10:  # the other thread is reseeding before and during the draws below
            time.sleep(0.001)
        with seeded(1):
            first = torch.rand(8)
            time.sleep(0.05)  # without the lock, a reseed(2) lands here
            second = torch.rand(8)
    finally:
        stop.set()
        thread.join()
    assert torch.equal(first, want[0]) and torch.equal(second, want[1])
