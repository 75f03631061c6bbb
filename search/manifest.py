"""What it takes to reproduce a trial: seed, code version, data, library versions, device."""

from __future__ import annotations

import hashlib
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import torch


def trial_seed(study_seed: int, trial_number: int) -> int:
    """Return the trial's seed, derived from the study seed and the trial number only."""
    digest = hashlib.sha256(f"{study_seed}:{trial_number}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@cache
def git_commit() -> str | None:
    """Return the commit of the code that runs, with '+dirty' when it has local changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+dirty" if dirty else "")) or None


def device_name(device: str) -> str:
    """Return a human name for the device: the GPU's model or 'cpu'."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return "cpu"


def manifest(seed: int, data_fingerprint: str, device: str) -> dict[str, Any]:
    """Return the reproducibility manifest stored on every trial."""
    return {
        "seed": seed,
        "git_commit": git_commit(),
        "data_fingerprint": data_fingerprint,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": device_name(device),
    }
