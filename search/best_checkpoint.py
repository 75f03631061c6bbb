"""Keeps the best finished trial's weights on this machine, so the final test need not retrain."""

from __future__ import annotations

import contextlib
import fcntl
import threading
from collections.abc import Iterator
from pathlib import Path

import optuna
import torch
from torch import nn

from models.checkpoint import load_checkpoint, save_checkpoint
from models.rnn import ModelSpec


class BestCheckpoint:
    """One checkpoint file per study; overwritten only by a trial that beats the one it holds.

    The bar is the value written in the file itself, not `study.best_value`: a trial that has
    saved its weights but is not told yet is not in the study's best, and a worse trial
    finishing just then would overwrite it. The compare-and-write holds a thread lock and an
    fcntl lock on `<file>.lock`, so trials in threads and workers in other processes on this
    machine take turns; save_checkpoint replaces the file atomically (tmp + os.replace).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def offer(
        self,
        study: optuna.Study,
        trial_number: int,
        value: float,
        model: nn.Module,
        spec: ModelSpec,
    ) -> bool:
        """Save the model if its value beats the one best.pt holds; return whether it did."""
        with self._locked():
            held = self.stored_value(study.study_name)
            if held is not None and value <= held:
                return False
            self._write(study.study_name, trial_number, value, model, spec)
            return True

    def stored_value(self, study_name: str) -> float | None:
        """Return the value written in the checkpoint file for this study, else None."""
        if not self.path.is_file():
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
            extra = payload["extra"]
        except Exception:  # unreadable (e.g. written by an older version): any trial beats it
            return None
        if extra.get("study", study_name) != study_name:  # another study's leftover file
            return None
        value = extra.get("value")
        return None if value is None else float(value)

    def save(
        self,
        trial_number: int,
        value: float,
        model: nn.Module,
        spec: ModelSpec,
        study_name: str | None = None,
    ) -> None:
        """Write the model as this study's best checkpoint (unconditionally, atomically)."""
        with self._locked():
            self._write(study_name, trial_number, value, model, spec)

    def load(self, trial_number: int) -> tuple[nn.Module, ModelSpec] | None:
        """Return the saved model when the file holds this trial's weights, else None."""
        if not self.path.exists():
            return None
        model, spec, extra = load_checkpoint(self.path)
        return (model, spec) if extra.get("trial_number") == trial_number else None

    def _write(
        self,
        study_name: str | None,
        trial_number: int,
        value: float,
        model: nn.Module,
        spec: ModelSpec,
    ) -> None:
        extra = {"trial_number": trial_number, "value": float(value)}
        if study_name is not None:
            extra["study"] = study_name
        save_checkpoint(self.path, model, spec, extra)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # flock is per open file description: it also serialises two instances in one process.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(f"{self.path}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
