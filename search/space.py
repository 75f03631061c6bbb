"""Turns the definition's search space into one trial's hyperparameters."""

from __future__ import annotations

from typing import Any

import optuna

from search.definition import ParamSpec, StudyDefinition


def suggest(trial: optuna.Trial, definition: StudyDefinition) -> dict[str, Any]:
    """Return every hyperparameter of the trial: sampled ones and fixed ones."""
    return {p.name: _suggest_one(trial, p) for p in definition.space}


def _suggest_one(trial: optuna.Trial, p: ParamSpec) -> Any:
    if p.fixed:
        return p.value
    if p.choices is not None:
        return trial.suggest_categorical(p.name, list(p.choices))
    if isinstance(p.low, int) and isinstance(p.high, int):
        return trial.suggest_int(p.name, p.low, p.high, log=p.log, step=int(p.step or 1))
    return trial.suggest_float(p.name, float(p.low), float(p.high), log=p.log, step=p.step)
