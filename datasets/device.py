"""The one place a device name from a flag or a setting becomes a torch device name."""

from __future__ import annotations

import os

import torch

from datasets.errors import UserError


class DeviceError(UserError):
    """A device that is not a CPU or CUDA device, or a GPU that is not here."""


def resolve_device(requested: str | None = "auto") -> str:
    """Return the device to run on: 'auto' (or None) is cuda when a GPU is visible, else cpu.

    cpu, cuda and cuda:N are returned as given once they are usable here; anything else, or a
    GPU this machine does not have, is a DeviceError that says what to pass instead.
    """
    if requested is None or requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise DeviceError(
            f"--device {requested!r} is not a device here; use cpu, cuda, cuda:N or auto"
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {requested}: no CUDA GPU is visible here; use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"--device {requested}: this machine has "
                f"{torch.cuda.device_count()} CUDA GPU(s), numbered from 0"
            )
    return requested


def cpu_threads_each(jobs: int) -> int:
    """Return the torch threads each of `jobs` CPU jobs side by side gets: the cores split evenly,
    at least one (more would only make the jobs take turns on the same cores)."""
    return max(1, (os.cpu_count() or 1) // jobs)
