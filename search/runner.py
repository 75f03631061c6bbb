"""The worker loop: ask for trials until the study holds its budget, run them, tell the outcome.

Optuna's `study.optimize(n_trials=N)` counts trials per call, so N workers would run N x N
trials; `MaxTrialsCallback` counts the study's trials, but only after each trial ends, so
workers that ask at the same moment all start one more and the study overshoots by up to one
trial per worker, and it counts every retry of a dead worker's trial again. Here every worker
counts the study's logical trials (a trial and all its retries once) under a lock shared
through the storage, so `--trials 50` means 50 in all, each once, however many workers share it.

Dead workers' trials (heartbeat silent past the grace period, or never sent) are failed and
queued for retry under the same lock, so two workers never retry the same trial twice.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from search import optuna_internals
from search.errors import TrialFailed, TrialInterrupted
from search.storage import MAX_RETRY, budget_lock

log = logging.getLogger(__name__)

Objective = Callable[[optuna.Trial, threading.Event], float]
# Consecutive FAIL trials after which a worker stops: a systematic bug, not bad luck.
MAX_FAILURES = 5


@dataclass(frozen=True)
class RunOutcome:
    reason: str  # 'budget' | 'timeout' | 'interrupted' | 'failures'
    trials_run: int
    last_failure: str | None = None  # the fail_reason of the last failed trial, if any


def counted_trials(trials: Sequence[FrozenTrial]) -> int:
    """Return the study's logical trials: a trial and all its retries count once."""
    # Optuna points every retry of a chain at the chain's first trial (failed_trial), so a
    # trial that is not a retry starts a chain, and chains are what the budget counts.
    return sum(1 for t in trials if "failed_trial" not in t.system_attrs)


def run_trials(
    study: optuna.Study,
    objective: Objective,
    *,
    storage_url: str,
    total: int,
    jobs: int = 1,
    timeout: float | None = None,
    on_trial_end: Callable[[FrozenTrial], None] | None = None,
    sampler_for: Callable[[int], optuna.samplers.BaseSampler] | None = None,
    stop: threading.Event | None = None,
    poll_s: float = 2.0,
    max_failures: int = MAX_FAILURES,
) -> RunOutcome:
    """Run trials in `jobs` threads until the study holds `total`, time runs out, Ctrl-C, or
    `max_failures` trials in a row fail (0: never); a worker thread's exception is re-raised."""
    # Optuna warns that heartbeats are meant for Study.optimize; this loop sends them itself.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    stop = stop or threading.Event()
    deadline = time.monotonic() + timeout if timeout else None
    finished: list[FrozenTrial] = []
    timed_out = threading.Event()
    failed_out = threading.Event()
    errors: list[BaseException] = []
    tally = _FailureTally(max_failures)

    def work(done: threading.Event) -> None:
        try:
            while not stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    timed_out.set()
                    return
                trial = _next_trial(study, storage_url, total, stop, poll_s, sampler_for)
                if trial is None:
                    return
                frozen = _run_one(study, trial, objective, stop)
                finished.append(frozen)
                if on_trial_end is not None:
                    on_trial_end(frozen)
                if tally.add(frozen, interrupted=stop.is_set()):
                    failed_out.set()
                    stop.set()
        except BaseException as exc:  # re-raised in the main thread: never end silently
            errors.append(exc)
            stop.set()
        finally:
            done.set()

    # Waiting on events, not Thread.join: a join interrupted by Ctrl-C can return early on
    # Python 3.11 and leave the trial in flight unrecorded.
    done = [threading.Event() for _ in range(jobs)]
    for i, event in enumerate(done):
        threading.Thread(target=work, args=(event,), name=f"trial-{i}", daemon=True).start()
    try:
        while not all(e.is_set() for e in done):
            time.sleep(0.2)
    except KeyboardInterrupt:
        # Trials stop at their next step; each is told FAIL and its W&B run closed.
        stop.set()
        while not all(e.is_set() for e in done):
            time.sleep(0.1)
        return RunOutcome("interrupted", len(finished))
    if errors:
        raise errors[0]
    if failed_out.is_set():
        return RunOutcome("failures", len(finished), tally.last_reason)
    if stop.is_set():
        return RunOutcome("interrupted", len(finished))
    return RunOutcome("timeout" if timed_out.is_set() else "budget", len(finished))


class _FailureTally:
    """Counts this process's FAIL trials in a row; a COMPLETE or PRUNED trial resets it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_a_row = 0
        self.last_reason: str | None = None
        self._lock = threading.Lock()

    def add(self, trial: FrozenTrial, interrupted: bool) -> bool:
        """Record a finished trial; return whether the limit of failures in a row is reached."""
        with self._lock:
            if trial.state != TrialState.FAIL:
                self.in_a_row = 0
                return False
            if interrupted:  # Ctrl-C fails the trials in flight; that is no bug in them
                return False
            self.in_a_row += 1
            self.last_reason = trial.user_attrs.get("fail_reason") or "no reason recorded"
            return self.limit > 0 and self.in_a_row >= self.limit


def _next_trial(
    study: optuna.Study,
    url: str,
    total: int,
    stop: threading.Event,
    poll_s: float,
    sampler_for: Callable[[int], optuna.samplers.BaseSampler] | None,
) -> optuna.Trial | None:
    heartbeat = optuna_internals.heartbeat_enabled(study)
    while not stop.is_set():
        with budget_lock(url, study.study_name):
            if heartbeat:
                # Under the lock: one worker fails a dead worker's trial and queues its retry.
                fail_stale_trials(study)
            trials = study.get_trials(deepcopy=False)
            if counted_trials(trials) < total or any(t.state == TrialState.WAITING for t in trials):
                if sampler_for is not None:
                    # A sampler seeded for this trial number: a resumed run or another worker
                    # with the same study seed draws new params, not the first run's again.
                    study.sampler = sampler_for(len(trials))
                return study.ask()
        # Budget reached, but a running trial may still die and need its retry run here.
        if not heartbeat or not any(t.state == TrialState.RUNNING for t in trials):
            return None
        stop.wait(poll_s)
    return None


def fail_stale_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Fail the study's dead-worker trials and queue their retries; return the failed trials.

    Call it under `budget_lock`: the storage alone does not stop two workers (SQLite) from
    failing the same trial and queuing two retries.
    """
    failed = []
    retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
    silent_s = optuna_internals.grace_period_s(study)
    for trial_id in optuna_internals.stale_trial_ids(study):
        trial = optuna_internals.frozen_trial(study, trial_id)
        reason = f"its worker went silent for over {silent_s:g} s (killed or hung)"
        if _last_attempt(trial):
            reason += f"; abandoned after {MAX_RETRY + 1} attempts"
        try:  # before FAIL: a finished trial's attrs are read-only
            optuna_internals.set_user_attr(study, trial_id, "fail_reason", reason)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # its worker was only late, and has finished it meanwhile
        trial = optuna_internals.fail_running_trial(study, trial_id)
        if trial is None:
            continue
        log.warning("trial %d: %s", trial.number, reason)
        failed.append(trial)
        retry(study, trial)
    return failed


def _last_attempt(trial: FrozenTrial) -> bool:
    """Whether a trial is the last retry its chain is allowed (after it, nothing is queued)."""
    return len(trial.system_attrs.get("retry_history", [])) >= MAX_RETRY


def _run_one(
    study: optuna.Study, trial: optuna.Trial, objective: Objective, stop: threading.Event
) -> FrozenTrial:
    value: float | None = None
    state = TrialState.COMPLETE
    with optuna_internals.heartbeat(study, trial):
        try:
            value = objective(trial, stop)
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except (TrialInterrupted, KeyboardInterrupt) as exc:
            reason = f"interrupted by the user: {exc}".rstrip(": ")
            stored = optuna_internals.frozen_trial(study, optuna_internals.trial_id(trial))
            if _last_attempt(stored):  # not queued again: say so, not "will resume"
                reason += f"; abandoned after {MAX_RETRY + 1} attempts"
            trial.set_user_attr("fail_reason", reason)
            state = TrialState.FAIL
            stop.set()
        except TrialFailed as exc:
            trial.set_user_attr("fail_reason", str(exc))
            state = TrialState.FAIL
        except Exception as exc:  # one bad trial is recorded; many in a row stop the run
            log.exception("trial %d failed", trial.number)
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
            state = TrialState.FAIL
    if state == TrialState.COMPLETE:
        return study.tell(trial, value)
    frozen = study.tell(trial, state=state)
    if stop.is_set() and state == TrialState.FAIL:
        # Interrupted, not broken: queue it again with the same params, so the same command
        # resumes it and the budget counts it once (as for a dead worker's trial).
        RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, frozen)
    return frozen
