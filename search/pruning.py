"""Why a pruner stopped a trial, in numbers a person can check."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from search.paired_pruner import PairedPruner


def explain_prune(trial: optuna.Trial, epoch: int, best_so_far: float) -> dict[str, Any]:
    """Return the prune reason of the study's pruner: the paired test, or the median trailed."""
    pruner = trial.study.pruner
    if isinstance(pruner, PairedPruner):
        verdict = pruner.last_verdict(trial.number)
        if verdict is not None and verdict.epoch == epoch:
            return verdict.reason()
    if isinstance(pruner, optuna.pruners.MedianPruner):
        return _median_reason(trial, epoch, best_so_far)
    name = type(pruner).__name__
    return {
        "kind": name,
        "epoch": epoch,
        "value": best_so_far,
        "text": f"pruned at epoch {epoch} by {name}: best val top-1 {best_so_far:.4f}",
    }


def _median_reason(trial: optuna.Trial, epoch: int, best_so_far: float) -> dict[str, Any]:
    """Return the epoch, the trial's best value, and the median (of how many trials) it trailed."""
    completed = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    values = [t.intermediate_values[epoch] for t in completed if epoch in t.intermediate_values]
    median = float(np.nanmedian(values)) if values else float("nan")
    return {
        "epoch": epoch,
        "value": best_so_far,
        "median": median,
        "n_trials": len(values),
        "text": (
            f"pruned at epoch {epoch}: best val top-1 {best_so_far:.4f} < median {median:.4f} "
            f"of {len(values)} completed trials at that epoch"
        ),
    }
