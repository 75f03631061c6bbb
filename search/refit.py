"""Retrain one configuration on all of a split's training groups, then score its test groups."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from datasets.batches import BatchLoader
from models.evaluate import Evaluation, evaluate
from models.rnn import build_model
from models.seeding import seeded
from models.training import TrainConfig, train
from models.weight_average import EpochAverage
from search.objective import TrialSettings, loaders, model_spec, train_config

# Epochs whose final weights a refit averages: measured in bench/refit_stability.py (BENCHMARKS.md).
AVERAGE_LAST = 3


@dataclass(frozen=True)
class Refit:
    """A refit model's test score and what it was trained on."""

    test: Evaluation
    epochs: int
    train_clips: int
    averaged: int  # epochs whose final weights were averaged into the model scored


@dataclass(frozen=True)
class RefitRun:
    """A refit ready to train: train(model, train_loader, None, config) runs it."""

    model: nn.Module
    train_loader: BatchLoader
    test_loader: BatchLoader
    config: TrainConfig
    train_clips: int


def all_training_parts(parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Return parts with the validation groups folded into 'train' (and no 'val' part)."""
    merged = np.sort(np.concatenate([parts["train"], parts["val"]])).astype(np.int64)
    return {"train": merged, "test": parts["test"]}


def prepare_refit(
    params: dict[str, Any],
    settings: TrialSettings,
    seed: int,
    epochs: int,
    parts: dict[str, np.ndarray] | None = None,
) -> RefitRun:
    """Build the model, loaders and config that train params for `epochs` on train + val.

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
    return RefitRun(model, train_loader, test_loader, config, len(merged["train"]))


def refit_and_score(
    params: dict[str, Any],
    settings: TrialSettings,
    seed: int,
    epochs: int,
    parts: dict[str, np.ndarray] | None = None,
    average_last: int = AVERAGE_LAST,
) -> Refit:
    """Train params for exactly `epochs` on train + validation groups; score the test groups.

    No validation part is left to choose an epoch on: the model scored is the mean of the
    weights at the ends of the last `average_last` epochs (1: the last epoch's weights).
    parts: the split's 'train' / 'val' / 'test' clip indices (default: the study's split).
    """
    run = prepare_refit(params, settings, seed, epochs, parts)
    average = EpochAverage(run.model, epochs, average_last)
    train(run.model, run.train_loader, None, run.config, on_epoch=average)
    run.model.load_state_dict(average.state_dict())
    test = evaluate(run.model, run.test_loader, device=settings.device)
    return Refit(test=test, epochs=epochs, train_clips=run.train_clips, averaged=average.averaged)
