"""One W&B run per Optuna trial: step and epoch metrics on their own axes, the final state."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from search.tracking.config import TrackingConfig
from search.tracking.start import run_path, start_run

logger = logging.getLogger(__name__)

TRIAL_STATES = ("complete", "pruned", "failed")
STEP_METRIC = "train/step"  # x axis of log_step metrics
EPOCH_METRIC = "epoch"  # x axis of log_epoch metrics: the step trial.report uses
STATE_KEY = "trial_state"  # summary key; W&B's own run "state" is finished/crashed/failed
# Keys the study is expected to log (the W&B report's panels refer to them).
BEST_METRIC = "best_val_top1"
VAL_TOP1 = "val/top1"


class TrialRun:
    """One W&B run for one Optuna trial; each instance logs only to its own run (thread-safe)."""

    def __init__(self, cfg: TrackingConfig, trial_number: int, config: Mapping[str, Any]):
        self.cfg = cfg
        self.trial_number = trial_number
        self._run = start_run(cfg, job_type="trial", name=f"trial-{trial_number}", config=config)
        self.path: str | None = run_path(self._run)
        self._lock = threading.Lock()
        self._finished = self._run is None
        self._axis: dict[str, str] = {}  # metric -> its step metric, defined on first use
        self._warned: set[tuple[str, str]] = set()
        if self._run is not None:
            logger.info("trial %d tracked in W&B run %s", trial_number, self.path)

    @property
    def finished(self) -> bool:
        """Return whether the run has been closed (always True when tracking is disabled)."""
        return self._finished

    def log_step(self, metrics: Mapping[str, float], step: int) -> None:
        """Log training-step metrics (e.g. 'train/loss', 'train/top1', 'train/examples_per_s')."""
        self._log(metrics, STEP_METRIC, step)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Log per-epoch metrics (e.g. 'val/loss', 'val/top1', 'val/top5') at x = epoch."""
        self._log(metrics, EPOCH_METRIC, epoch)

    def _log(self, metrics: Mapping[str, float], axis: str, value: int) -> None:
        if self._run is None:
            return
        with self._lock:
            if self._finished:
                logger.warning(
                    "W&B run of trial %d is finished; dropped %s",
                    self.trial_number,
                    sorted(metrics),
                )
                return
            for key in metrics:
                if key in (STEP_METRIC, EPOCH_METRIC):  # an axis logged as a value, e.g. epoch
                    continue
                # Each metric gets its own x axis: W&B's global _step counts log calls and
                # would interleave steps and epochs.
                if key not in self._axis:
                    self._axis[key] = axis
                    self._run.define_metric(key, step_metric=axis)
                elif self._axis[key] != axis and (key, axis) not in self._warned:
                    self._warned.add((key, axis))
                    logger.warning(
                        "metric %r is logged against both %r and %r; W&B plots it against %r. "
                        "Give the %r one its own name",
                        key,
                        self._axis[key],
                        axis,
                        self._axis[key],
                        axis,
                    )
            self._run.log({**metrics, axis: value})

    def finish(self, state: str, summary: Mapping[str, Any] | None = None) -> None:
        """Write the trial's final state and summary, then close the run; later calls do nothing."""
        if state not in TRIAL_STATES:
            raise ValueError(f"trial state {state!r} is not one of {', '.join(TRIAL_STATES)}")
        with self._lock:
            if self._finished:
                return
            self._finished = True
            run = self._run
            try:
                run.summary.update({**(summary or {}), STATE_KEY: state})
            finally:
                run.finish(exit_code=1 if state == "failed" else 0)
        logger.info("trial %d W&B run closed as %s", self.trial_number, state)

    def __enter__(self) -> TrialRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._finished:
            return
        state, summary = "failed", {"fail_reason": "run closed without a final state"}
        if exc_type is not None:
            summary = {"fail_reason": f"{exc_type.__name__}: {exc}".rstrip(": ")}
            if _is_trial_pruned(exc):
                state, summary = "pruned", {"prune_reason": str(exc)}
        try:
            self.finish(state, summary)
        except Exception:  # never hide the exception that is already on its way out
            logger.exception("closing the W&B run of trial %d failed", self.trial_number)
            if exc_type is None:
                raise


def _is_trial_pruned(exc: BaseException | None) -> bool:
    import optuna

    return isinstance(exc, optuna.TrialPruned)
