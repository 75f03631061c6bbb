"""Keeps the best finished trial's weights on this machine, so the final test need not retrain."""

from __future__ import annotations

import threading
from pathlib import Path

import optuna
from torch import nn

from models.checkpoint import load_checkpoint, save_checkpoint
from models.rnn import ModelSpec


class BestCheckpoint:
    """One checkpoint file per study; overwritten only by a trial that beats every finished one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def offer(
        self, study: optuna.Study, trial_number: int, value: float, model: nn.Module,
        spec: ModelSpec,
    ) -> bool:
        """Save the model if its value beats the study's best so far; return whether it did."""
        with self._lock:
            try:
                best = study.best_value
            except ValueError:  # no complete trial yet
                best = float("-inf")
            if value <= best:
                return False
            self.save(trial_number, value, model, spec)
            return True

    def save(self, trial_number: int, value: float, model: nn.Module, spec: ModelSpec) -> None:
        """Write the model as this study's best checkpoint."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(self.path, model, spec, {"trial_number": trial_number, "value": value})

    def load(self, trial_number: int) -> tuple[nn.Module, ModelSpec] | None:
        """Return the saved model when the file holds this trial's weights, else None."""
        if not self.path.exists():
            return None
        model, spec, extra = load_checkpoint(self.path)
        return (model, spec) if extra.get("trial_number") == trial_number else None
