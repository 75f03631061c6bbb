"""The UCF-101 protocol: one configuration refit and scored on each official split."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from datasets.splits import SplitSpec, split_parts
from search.objective import TrialSettings
from search.refit import refit_and_score


def bootstrap_interval(
    correct: np.ndarray, draws: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Return the percentile bootstrap interval of the mean of per-clip 0/1 correctness."""
    correct = np.asarray(correct, dtype=np.float64)
    if correct.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, correct.size, size=(draws, correct.size))  # (draws, clips)
    means = correct[picks].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def evaluate_splits(
    params: dict[str, Any],
    settings: TrialSettings,
    seed: int,
    epochs: int,
    splits: Sequence[int],
    draws: int = 1000,
) -> dict[str, Any]:
    """Refit params on each split's training groups, score its test groups; return the record.

    Per split: top-1 with a 95% bootstrap interval over test clips; over the splits: the mean
    and (sample) standard deviation of top-1, the figure UCF-101 papers report.
    """
    data_spec = settings.definition.data
    per_split, averaged = [], 0
    for split in splits:
        started = time.perf_counter()
        spec = SplitSpec(
            split=split, val_groups=data_spec.val_groups, lists_dir=data_spec.lists_dir
        )
        parts = split_parts(settings.data.features.filenames, spec)
        refit = refit_and_score(params, settings, seed, epochs, parts)
        averaged = refit.averaged  # the same for every split: the same epochs
        low, high = bootstrap_interval(refit.test.correct, draws, seed=split)
        per_split.append(
            {
                "split": split,
                "top1": float(refit.test.top1),
                "top5": float(refit.test.top5),
                "interval95": [low, high],
                "train_clips": refit.train_clips,
                "test_clips": int(refit.test.examples),
                "wall_s": round(time.perf_counter() - started, 3),
            }
        )
    scores = [s["top1"] for s in per_split]
    return {
        "params": params,
        "epochs": epochs,
        "averaged_epochs": averaged,
        "seed": seed,
        "bootstrap_draws": draws,
        "splits": per_split,
        "mean_top1": statistics.fmean(scores),
        "std_top1": statistics.stdev(scores) if len(scores) > 1 else 0.0,
    }
