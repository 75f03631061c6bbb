"""Builds a small but real Optuna study, laid out the way search/ writes one, for tests."""

from __future__ import annotations

import math
import random

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from search import optuna_internals

NUM_CLASSES = 101
# Index = class id; 0 is the padding class. Synthetic names of varied length, so label layout
# is exercised without depending on datasets/ucf101.py.
_STEMS = ("Apply", "Band", "PlayingDaf", "HammerThrow")
CLASS_NAMES: tuple[str, ...] = (
    "background",
    *(f"{_STEMS[i % 4]}Action{i:03d}" for i in range(1, NUM_CLASSES + 1)),
)

SPACE = {
    "cell": CategoricalDistribution(["lstm", "gru"]),
    "layers": IntDistribution(1, 3),
    "hidden": IntDistribution(32, 512, log=True),
    "lr": FloatDistribution(1e-4, 1e-2, log=True),
    "clip_norm": FloatDistribution(0.1, 5.0),
}

# (final state, epochs reported) for each trial, in order.
PLAN: tuple[tuple[TrialState, int], ...] = (
    (TrialState.COMPLETE, 5),
    (TrialState.COMPLETE, 5),
    (TrialState.PRUNED, 2),
    (TrialState.COMPLETE, 5),
    (TrialState.FAIL, 1),
    (TrialState.PRUNED, 3),
)


def curve(trial_number: int, epochs: int) -> list[float]:
    """Return a rising validation top-1 curve for a trial, deterministic in its number."""
    ceiling = 0.45 + 0.08 * ((trial_number * 37) % 5)
    return [round(ceiling * (1 - math.exp(-0.7 * e)), 4) for e in range(1, epochs + 1)]


def confusion_matrix(num_classes: int = NUM_CLASSES, seed: int = 0) -> np.ndarray:
    """Return a (num_classes + 1)^2 int64 confusion matrix, mostly diagonal, row 0 empty."""
    rng = np.random.default_rng(seed)
    n = num_classes + 1
    conf = rng.poisson(0.15, size=(n, n)).astype(np.int64)
    conf[np.arange(n), np.arange(n)] += rng.integers(5, 40, size=n)
    conf[0, :] = 0  # no test clip has the background label
    conf[:, 0] = 0
    if n > 3:  # one class that is always wrong
        conf[2, 3] += conf[2, 2]
        conf[2, 2] = 0
    return conf


def final_attr(study: optuna.Study, num_classes: int = NUM_CLASSES) -> dict:
    """Return a "final" study attr for the study's current best trial."""
    best = study.best_trial
    conf = confusion_matrix(num_classes)
    rows = conf.sum(axis=1)
    per_class = [None if rows[i] == 0 else float(conf[i, i] / rows[i]) for i in range(len(rows))]
    total = int(rows.sum())
    return {
        "trial_number": best.number,
        "params": dict(best.params),
        "val_top1": float(best.value),
        "test": {
            "loss": 1.234,
            "top1": float(np.trace(conf) / total),
            "top5": 0.912,
            "per_class": per_class,
            "confusion": conf.tolist(),
        },
        "class_names": list(CLASS_NAMES[: num_classes + 1]),
        "checkpoint": "studies/checkpoints/best.pt",
    }


def make_study(
    storage: str | optuna.storages.BaseStorage | None = None,
    *,
    study_name: str = "factory",
    plan: tuple[tuple[TrialState, int], ...] = PLAN,
    running: bool = False,
    final: bool = True,
    baseline: bool = True,
    seed: int = 0,
) -> optuna.Study:
    """Return a study with trials per `plan` (+ one RUNNING trial when asked) and user attrs.

    Built in memory and copied into `storage` in one go: SQLite commits cost ~40 ms each on a
    slow disk, and building trial by trial there would take seconds.
    """
    study = optuna.create_study(
        study_name=study_name,
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=seed),
        load_if_exists=False,
    )
    rng = random.Random(seed)
    for state, epochs in plan:
        trial = study.ask(SPACE)
        values = curve(trial.number, epochs)
        for epoch, value in enumerate(values, start=1):
            trial.report(value, epoch)
        _set_run_attrs(trial, epochs, rng)
        if state == TrialState.PRUNED:
            trial.set_user_attr(
                "prune_reason",
                {"epoch": epochs, "value": values[-1], "median": values[-1] + 0.05, "n_trials": 2},
            )
            study.tell(trial, state=TrialState.PRUNED)
        elif state == TrialState.FAIL:
            trial.set_user_attr("fail_reason", "TrainingDiverged: non-finite loss at epoch 1")
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, max(values))
    if running:
        trial = study.ask(SPACE)
        trial.report(0.21, 1)
    if baseline:
        study.set_user_attr("baseline", {"bag_of_frames_val_top1": 0.41})
    if final and any(t.state == TrialState.COMPLETE for t in study.trials):
        study.set_user_attr("final", final_attr(study))
    if storage is None:
        return study
    if isinstance(storage, str):  # one engine for the copy and the study handed back
        storage = optuna.storages.RDBStorage(storage)
    optuna.copy_study(
        from_study_name=study_name,
        from_storage=optuna_internals.storage(study),
        to_storage=storage,
        to_study_name=study_name,
    )
    return optuna.load_study(
        study_name=study_name,
        storage=storage,
        sampler=optuna.samplers.RandomSampler(seed=seed + 1),
    )


def _set_run_attrs(trial: optuna.Trial, epochs: int, rng: random.Random) -> None:
    trial.set_user_attr("examples_per_s", round(rng.uniform(800, 4000), 1))
    trial.set_user_attr("param_count", rng.randint(100_000, 5_000_000))
    trial.set_user_attr("epochs_run", epochs)
    trial.set_user_attr("wall_s", round(rng.uniform(5, 60), 2))
    trial.set_user_attr("wandb_run", f"wandb/offline-run-x/run-{trial.number}")
    trial.set_user_attr("manifest", {"torch": "2.14.1", "device": "cpu", "data": "synthetic"})
