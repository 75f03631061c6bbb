"""Torch's process-wide seed, taken in turns by the threads of one process (--jobs N).

`torch.manual_seed` reseeds one generator shared by every thread: a trial that reseeds while
another trial's thread is drawing its initial weights changes those weights. Every seeding in
this project goes through this lock, so a seeded draw (a model build) is never interleaved
with another thread's reseed. Draws made later, unlocked (dropout masks), still interleave
when trials overlap: that is why only --jobs 1 promises reproducible dropout.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_LOCK = threading.RLock()


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Hold the seed lock with torch seeded by `seed`; draws made inside are reproducible."""
    with _LOCK:
        torch.manual_seed(seed)
        yield


def reseed(seed: int) -> None:
    """Seed torch for the draws that follow, never in the middle of another thread's seeded draw."""
    with _LOCK:
        torch.manual_seed(seed)
