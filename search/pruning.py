"""Why the median pruner stopped a trial, in numbers a person can check."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState


def explain_prune(trial: optuna.Trial, epoch: int, best_so_far: float) -> dict[str, Any]:
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
