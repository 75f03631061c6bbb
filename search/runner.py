"""The worker loop: ask for trials until the study holds its budget, run them, tell the outcome.

Optuna's `study.optimize(n_trials=N)` counts trials per call, so N workers would run N x N
trials; here every worker counts the study's trials under a lock shared through the storage,
so `--trials 50` means 50 trials in all, each number once, however many workers share it.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from search.objective import TrialFailed, TrialInterrupted
from search.storage import MAX_RETRY, budget_lock

log = logging.getLogger(__name__)

Objective = Callable[[optuna.Trial, threading.Event], float]


@dataclass(frozen=True)
class RunOutcome:
    reason: str  # 'budget' | 'timeout' | 'interrupted'
    trials_run: int


def counted_trials(trials: Sequence[FrozenTrial]) -> int:
    """Return the study's trials that count against its budget: a retried dead trial counts once."""
    retried = {t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs}
    return len(trials) - len(retried)


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
) -> RunOutcome:
    """Run trials in `jobs` threads until the study holds `total`, time runs out or Ctrl-C."""
    # Optuna warns that heartbeats are meant for Study.optimize; this loop sends them itself.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    stop = stop or threading.Event()
    deadline = time.monotonic() + timeout if timeout else None
    finished: list[FrozenTrial] = []
    timed_out = threading.Event()

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
    if stop.is_set():
        return RunOutcome("interrupted", len(finished))
    return RunOutcome("timeout" if timed_out.is_set() else "budget", len(finished))


def _next_trial(
    study: optuna.Study,
    url: str,
    total: int,
    stop: threading.Event,
    poll_s: float,
    sampler_for: Callable[[int], optuna.samplers.BaseSampler] | None,
) -> optuna.Trial | None:
    heartbeat = is_heartbeat_enabled(study._storage)
    while not stop.is_set():
        if heartbeat:
            # A dead worker's trial becomes FAIL here and comes back as a WAITING retry.
            fail_stale_trials(study)
        with budget_lock(url, study.study_name):
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


def _run_one(
    study: optuna.Study, trial: optuna.Trial, objective: Objective, stop: threading.Event
) -> FrozenTrial:
    value: float | None = None
    state = TrialState.COMPLETE
    with get_heartbeat_thread(trial._trial_id, study._storage):
        try:
            value = objective(trial, stop)
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except (TrialInterrupted, KeyboardInterrupt) as exc:
            trial.set_user_attr("fail_reason", f"interrupted by the user: {exc}".rstrip(": "))
            state = TrialState.FAIL
            stop.set()
        except TrialFailed as exc:
            trial.set_user_attr("fail_reason", str(exc))
            state = TrialState.FAIL
        except Exception as exc:  # a bug or an unforeseen failure: record it, keep the study going
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
