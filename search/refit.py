"""Retrain one configuration on all of a split's training groups, then score its test groups."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.evaluate import Evaluation, evaluate
from models.rnn import build_model
from models.seeding import seeded
from models.training import train
from search.objective import TrialSettings, loaders, model_spec, train_config


@dataclass(frozen=True)
class Refit:
    """A refit model's test score and what it was trained on."""

    test: Evaluation
    epochs: int
    train_clips: int


def all_training_parts(parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Return parts with the validation groups folded into 'train' (and no 'val' part)."""
    merged = np.sort(np.concatenate([parts["train"], parts["val"]])).astype(np.int64)
    return {"train": merged, "test": parts["test"]}


def refit_and_score(
    params: dict[str, Any],
    settings: TrialSettings,
    seed: int,
    epochs: int,
    parts: dict[str, np.ndarray] | None = None,
) -> Refit:
    """Train params for exactly `epochs` on train + validation groups; score the test groups.

    parts: the split's 'train' / 'val' / 'test' clip indices (default: the study's split).
    """
    merged = all_training_parts(parts if parts is not None else settings.data.parts)
    # The objective's own builders, pointed at the merged parts: the same model, batches
    # and optimiser settings a trial of these params gets.
    refit_settings = dataclasses.replace(
        settings, data=dataclasses.replace(settings.data, parts=merged)
    )
    config = dataclasses.replace(train_config(params, refit_settings, seed), epochs=epochs)
    with seeded(seed):
        model = build_model(model_spec(params, refit_settings))
    train_loader, test_loader = loaders(params, refit_settings, seed, ("train", "test"))
    # No validation part is left to choose an epoch on: the last epoch's weights are kept.
    train(model, train_loader, None, config)
    test = evaluate(model, test_loader, device=settings.device)
    return Refit(test=test, epochs=epochs, train_clips=len(merged["train"]))
