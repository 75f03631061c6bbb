"""Models: the RNN classifier and bag-of-frames baseline, the training loop, evaluation.

The public names are listed here so `from models import train` shows the API; they are imported
on first use (PEP 562).
"""

from importlib import import_module
from typing import Any

_PUBLIC = {
    "ModelSpec": "rnn",
    "build_model": "rnn",
    "TrainConfig": "training",
    "TrainResult": "training",
    "EpochResult": "training",
    "StepResult": "training",
    "TrainingDiverged": "training",
    "train": "training",
    "Evaluation": "evaluate",
    "CheckpointError": "checkpoint",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "seeded": "seeding",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(import_module(f"models.{_PUBLIC[name]}"), name)
