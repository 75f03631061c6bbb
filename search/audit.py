"""Pruning audit: re-run a sample of pruned trials to their full budget, count wrong prunes."""

from __future__ import annotations

import logging
import math
import multiprocessing
import random
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from datasets.device import cpu_threads_each
from models.training import TrainingDiverged
from search.errors import StudyError
from search.objective import TrialSettings, train_alone
from search.space import suggest

logger = logging.getLogger(__name__)

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Return the Wilson score interval of a binomial proportion ((0, 1) when n is 0)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Clamped: at p = 0 or 1 rounding can put an end a hair outside [0, 1].
    return max(0.0, centre - half), min(1.0, centre + half)


def diverged(trial: FrozenTrial) -> bool:
    """Return whether a pruned trial was stopped for diverging (not by the pruner)."""
    reason = trial.user_attrs.get("prune_reason")
    # The objective records a divergence as {"epoch", "text"} only; a pruner's reason
    # always carries its numbers besides.
    return isinstance(reason, dict) and set(reason) <= {"epoch", "text"}


def auditable(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Return the trials the pruner stopped (pruned, not diverged, with a recorded seed)."""
    return [
        t
        for t in trials
        if t.state == TrialState.PRUNED
        and not diverged(t)
        and isinstance(t.user_attrs.get("manifest"), dict)
        and "seed" in t.user_attrs["manifest"]
    ]


def sample_trials(trials: Sequence[FrozenTrial], k: int, seed: int) -> list[FrozenTrial]:
    """Return a seeded sample of k trials (all of them when there are k or fewer), by number."""
    if k >= len(trials):
        return sorted(trials, key=lambda t: t.number)
    return sorted(random.Random(seed).sample(list(trials), k), key=lambda t: t.number)


def rerun(trial: FrozenTrial, settings: TrialSettings) -> dict[str, Any]:
    """Train a pruned trial's params with its seed to its full budget, no pruning; return it."""
    params = suggest(optuna.trial.FixedTrial(trial.params), settings.definition)
    seed = int(trial.user_attrs["manifest"]["seed"])
    reason = trial.user_attrs.get("prune_reason") or {}
    started = time.perf_counter()
    record: dict[str, Any] = {
        "trial_number": trial.number,
        "pruned_epoch": reason.get("epoch"),
        "pruned_by": reason.get("kind", "median"),  # the median reason predates "kind"
        # Validation top-1 reported at that epoch, whatever metric the pruner judged.
        "value_when_pruned": trial.intermediate_values.get(reason.get("epoch")),
    }
    try:
        # The study's stopping rule (budget, patience), as a normal trial of these params.
        _, result = train_alone(params, settings, seed)
    except TrainingDiverged as exc:  # it would have been stopped anyway: it counts as no loss
        record.update(final_value=None, epochs=exc.epoch, diverged=exc.reason)
    else:
        record.update(
            final_value=result.best_val_top1,
            epochs=len(result.epochs),
            best_epoch=result.best_epoch,
            curve=[round(e.val_top1, 6) for e in result.epochs],
        )
    record["wall_s"] = round(time.perf_counter() - started, 3)
    return record


def rerun_all(
    trials: Sequence[FrozenTrial], settings: TrialSettings, jobs: int
) -> list[dict[str, Any]]:
    """Return the re-runs of `trials`, in their order, `jobs` at a time.

    Each parallel re-run gets a process of its own with cores / jobs torch threads: threads
    would share torch's global generator, so a re-run's dropout would no longer be its seed's
    and it would not retrace its trial's curve. The processes are forked (the data is shared,
    not copied), which CUDA does not survive: on a GPU the re-runs go one at a time.
    """
    if jobs > 1 and settings.device != "cpu":
        raise StudyError(
            f"audit --jobs {jobs} runs its re-runs in CPU processes, and the study's device is "
            f"{settings.device}; use --jobs 1 there (a GPU is not shared between forks)"
        )
    if jobs == 1 or len(trials) < 2:
        return [_logged_rerun(t, settings) for t in trials]
    with ProcessPoolExecutor(
        max_workers=min(jobs, len(trials)),
        mp_context=multiprocessing.get_context("fork"),
        initializer=_start_rerun_process,
        initargs=(settings, cpu_threads_each(jobs)),
    ) as pool:
        return list(pool.map(_rerun_in_process, trials))


# A forked re-run process's settings, set once by _start_rerun_process (fork passes them
# without pickling: the data stays one memory-mapped copy).
_PROCESS_SETTINGS: TrialSettings | None = None


def _start_rerun_process(settings: TrialSettings, threads: int) -> None:
    global _PROCESS_SETTINGS
    _PROCESS_SETTINGS = settings
    torch.set_num_threads(threads)


def _rerun_in_process(trial: FrozenTrial) -> dict[str, Any]:
    assert _PROCESS_SETTINGS is not None, "_start_rerun_process did not run"
    return _logged_rerun(trial, _PROCESS_SETTINGS)


def _logged_rerun(trial: FrozenTrial, settings: TrialSettings) -> dict[str, Any]:
    logger.info("audit: re-running pruned trial %d", trial.number)
    return rerun(trial, settings)


def audit_study(
    study: optuna.Study, settings: TrialSettings, sample: int, seed: int = 0, jobs: int = 1
) -> dict[str, Any]:
    """Re-run a sample of the study's pruned trials and compare each with the completed ones.

    The re-runs are not added to the study; `jobs` of them run at once (see rerun_all). Returns
    the audit record (plain JSON).
    """
    started = time.perf_counter()
    trials = study.get_trials(deepcopy=False)
    complete = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not complete:
        raise StudyError(
            f"study {study.study_name!r} has no completed trial to compare "
            "pruned re-runs with; run more trials before the audit"
        )
    median, best = statistics.median(complete), max(complete)
    pool = auditable(trials)
    chosen = sample_trials(pool, sample, seed)
    reruns = []
    for record in rerun_all(chosen, settings, jobs):
        value = record["final_value"]
        record["beat_median"] = value is not None and value > median
        record["beat_best"] = value is not None and value > best
        reruns.append(record)
    beat_median = sum(r["beat_median"] for r in reruns)
    low, high = wilson_interval(beat_median, len(reruns))
    return {
        "sample_seed": seed,
        "pruned": len(pool),
        "audited": len(reruns),
        "complete": len(complete),
        "median": median,
        "best": best,
        "reruns": reruns,
        "beat_median": beat_median,
        "beat_best": sum(r["beat_best"] for r in reruns),
        "false_prune_rate": beat_median / len(reruns) if reruns else None,
        "interval95": [low, high],
        "interval_method": "wilson",
        "epochs": sum(r["epochs"] for r in reruns),
        "jobs": jobs,
        "wall_s": round(time.perf_counter() - started, 3),
    }
