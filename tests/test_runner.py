"""The worker loop on a real SQLite storage with stand-in objectives: counting, stale trials,
failures in a row and exceptions in worker threads."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from search import optuna_internals, runner
from search.runner import counted_trials, run_trials

REPO = Path(__file__).resolve().parents[1]


def _storage(tmp_path, beat: int = 1) -> tuple[str, RDBStorage]:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = RDBStorage(
        url,
        heartbeat_interval=beat,
        grace_period=beat,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(2),
    )
    return url, storage


def _study(tmp_path, beat: int = 1) -> tuple[str, optuna.Study]:
    url, storage = _storage(tmp_path, beat)
    return url, optuna.create_study(study_name="s", storage=storage, direction="maximize")


def _quick(trial: optuna.Trial, stop: threading.Event) -> float:
    return trial.suggest_float("x", 0.0, 1.0) + trial.suggest_int("n", 1, 9)


def _in_thread(fn, timeout: float = 120.0):
    """Run fn in a thread; return its result, or fail the test when it does not end."""
    box: dict = {}

    def call():
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the worker loop hung"
    if "error" in box:
        raise box["error"]
    return box["result"]


def _wait_stale(study: optuna.Study, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not optuna_internals.stale_trial_ids(study):
        assert time.monotonic() < deadline, "the silent trial never became stale"
        time.sleep(0.1)


def test_a_retry_chain_counts_once_against_the_budget(tmp_path):
    _, study = _study(tmp_path)
    retry = RetryHeartbeatStaleTrialCallback(max_retry=2)
    first = study.ask()
    first.suggest_float("x", 0.0, 1.0)
    failed = study.tell(first, state=TrialState.FAIL)
    for _ in range(2):  # fail -> fail -> complete, every retry pointing at the first trial
        retry(study, failed)
        again = study.ask()
        if _ == 0:
            failed = study.tell(again, state=TrialState.FAIL)
        else:
            study.tell(again, 0.5)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[2].system_attrs["retry_history"] == [0, 1]
    assert counted_trials(trials) == 1
    study.tell(study.ask(), 0.1)
    assert counted_trials(study.get_trials()) == 2


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_retried(tmp_path):
    url, study = _study(tmp_path)
    orphan = study.ask()  # its worker "died" here: RUNNING, no heartbeat ever sent
    orphan.suggest_float("x", 0.0, 1.0)
    orphan.suggest_int("n", 1, 9)
    outcome = _in_thread(lambda: run_trials(study, _quick, storage_url=url, total=1, poll_s=0.1))
    assert outcome.reason == "budget"
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].system_attrs["failed_trial"] == orphan.number
    assert trials[1].params == trials[0].params and set(trials[1].params) == {"x", "n"}


def test_two_workers_never_both_fail_and_retry_one_stale_trial(tmp_path):
    url, study = _study(tmp_path)
    stale = study.ask()
    stale.suggest_float("x", 0.0, 1.0)
    _wait_stale(study)
    storage = optuna_internals.rdb_storage(study)
    # Both workers read the stale trial as RUNNING before either writes FAIL, unless the loop
    # serialises them: the barrier only lets them past together when they overlap.
    barrier = threading.Barrier(2, timeout=3)
    check = storage.check_trial_is_updatable

    def overlapping_check(trial_id, state):
        if trial_id == optuna_internals.trial_id(stale) and state == TrialState.RUNNING:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait()
        return check(trial_id, state)

    storage.check_trial_is_updatable = overlapping_check
    stop = threading.Event()
    asked: list = []

    def worker():
        asked.append(runner._next_trial(study, url, 2, stop, 0.1, None))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    retries = [t for t in study.get_trials() if "failed_trial" in t.system_attrs]
    assert len(retries) == 1, [(t.number, t.state, t.system_attrs) for t in study.get_trials()]
    assert len(asked) == 2 and all(a is not None for a in asked)


def test_failures_in_a_row_stop_the_run_with_the_last_reason(tmp_path):
    url, study = _study(tmp_path)

    def broken(trial, stop):
        trial.suggest_float("x", 0.0, 1.0)
        raise RuntimeError(f"bug in trial {trial.number}")

    outcome = _in_thread(
        lambda: run_trials(study, broken, storage_url=url, total=50, max_failures=3)
    )
    assert outcome.reason == "failures"
    assert outcome.last_failure == "RuntimeError: bug in trial 2"
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL] * 3


def test_a_good_trial_resets_the_failures_in_a_row(tmp_path):
    url, study = _study(tmp_path)

    def flaky(trial, stop):
        x = trial.suggest_float("x", 0.0, 1.0)
        if trial.number % 3 != 2:
            raise RuntimeError("flaky")
        return x

    outcome = _in_thread(lambda: run_trials(study, flaky, storage_url=url, total=9, max_failures=3))
    assert outcome.reason == "budget" and outcome.trials_run == 9


def test_zero_max_failures_never_stops(tmp_path):
    url, study = _study(tmp_path)

    def broken(trial, stop):
        raise RuntimeError("always")

    outcome = _in_thread(
        lambda: run_trials(study, broken, storage_url=url, total=7, max_failures=0)
    )
    assert outcome.reason == "budget" and outcome.trials_run == 7


@pytest.mark.parametrize("jobs", [1, 2])
def test_an_exception_in_a_worker_thread_is_raised_in_the_main_thread(tmp_path, jobs):
    url, study = _study(tmp_path)

    def on_trial_end(frozen):
        raise OSError(f"callback broke on trial {frozen.number}")

    with pytest.raises(OSError, match="callback broke"):
        _in_thread(
            lambda: run_trials(
                study, _quick, storage_url=url, total=4, jobs=jobs, on_trial_end=on_trial_end
            )
        )


def test_a_trial_whose_worker_dies_on_every_attempt_is_abandoned_with_its_reason(tmp_path):
    _, study = _study(tmp_path)
    for attempt in range(3):  # the first try and MAX_RETRY retries, each worker dying silently
        trial = study.ask()  # the first ask makes a new trial, later ones pop the queued retry
        trial.suggest_float("x", 0.0, 1.0)
        _wait_stale(study)
        (failed,) = runner.fail_stale_trials(study)
        assert failed.number == attempt
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 3  # nothing queued a 4th time
    assert "went silent" in trials[0].user_attrs["fail_reason"]
    assert "abandoned" not in trials[1].user_attrs["fail_reason"]
    assert trials[2].user_attrs["fail_reason"].endswith("abandoned after 3 attempts")
    assert counted_trials(trials) == 1


def test_an_interrupted_last_attempt_says_it_is_abandoned_not_queued(tmp_path):
    url, study = _study(tmp_path)
    retry = RetryHeartbeatStaleTrialCallback(max_retry=2)
    for _ in range(2):
        trial = study.ask()
        trial.suggest_float("x", 0.0, 1.0)
        retry(study, study.tell(trial, state=TrialState.FAIL))

    def interrupted(trial, stop):
        trial.suggest_float("x", 0.0, 1.0)
        raise runner.TrialInterrupted("at epoch 1 step 3")

    outcome = _in_thread(lambda: run_trials(study, interrupted, storage_url=url, total=1))
    assert outcome.reason == "interrupted"
    last = study.get_trials()[-1]
    assert last.number == 2 and last.state == TrialState.FAIL
    assert last.user_attrs["fail_reason"] == (
        "interrupted by the user: at epoch 1 step 3; abandoned after 3 attempts"
    )
    assert not study.get_trials(states=(TrialState.WAITING,))


def test_importing_the_worker_loop_imports_neither_torch_nor_wandb():
    # The loop is generic: a trial's outcome types live in search.errors, not in the objective.
    code = (
        "import sys\n"
        "import search.runner\n"
        "heavy = sorted({'torch', 'wandb', 'search.objective'} & set(sys.modules))\n"
        "assert not heavy, f'search.runner imported {heavy}'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
