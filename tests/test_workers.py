"""Many workers, dead workers and Ctrl-C: real processes on the real PostgreSQL (and SQLite)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState
from study_fixtures import TINY_DEFINITION, study_args, write_tiny_data
from wandb_offline import offline_runs

from datasets.cache import load_features

REPO = Path(__file__).resolve().parent.parent
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _postgres_up() -> bool:
    try:
        with sqlalchemy.create_engine(PG_URL, connect_args={"connect_timeout": 3}).connect():
            return True
    except Exception:
        return False


postgres = pytest.mark.skipif(not _postgres_up(), reason="PostgreSQL is not up on 127.0.0.1:5432")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("workers")
    pattern = write_tiny_data(root)
    load_features(pattern, cache_dir=root / "cache")  # decoded once, before the workers race
    return pattern, root / "cache"


@pytest.fixture
def pg_study():
    name = f"workers-{uuid.uuid4().hex[:10]}"
    yield name
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=name, storage=PG_URL)


def _args(root: Path, data, name: str, storage: str, *extra: str) -> list[str]:
    pattern, cache = data
    args = study_args(root, pattern, *extra, name=name)
    args[args.index("--storage") + 1] = storage
    # Every worker shares the one decoded cache.
    definition = Path(args[args.index("--study") + 1])
    definition.write_text(definition.read_text().replace(str(root / "cache"), str(cache)))
    return args


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}
    # A shell that starts pytest in the background makes its children ignore SIGINT, and a
    # worker started so would never see the Ctrl-C these tests send: restore the default.
    return subprocess.Popen(
        [sys.executable, str(REPO / "run_study.py"), *args],
        cwd=REPO,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# Every parameter the tiny definition searches (batch_size is fixed, not suggested).
SPACE = {k for k, v in TINY_DEFINITION["space"].items() if isinstance(v, dict)}


def _wait_running(storage: str, name: str, timeout: float = 120.0) -> optuna.trial.FrozenTrial:
    """Return a RUNNING trial once it has drawn every parameter (it is training by then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            running = optuna.load_study(study_name=name, storage=storage).get_trials(
                states=(TrialState.RUNNING,)
            )
        except KeyError:
            running = []
        drawn = [t for t in running if set(t.params) == SPACE]
        if drawn:
            return drawn[0]
        time.sleep(0.1)
    raise AssertionError("no trial reached training with all its params drawn")


def _trial(storage: str, name: str, number: int) -> optuna.trial.FrozenTrial:
    """Return the trial as stored now (not a snapshot taken while it was still running)."""
    (trial,) = [
        t
        for t in optuna.load_study(study_name=name, storage=storage).get_trials()
        if t.number == number
    ]
    return trial


@postgres
@pytest.mark.postgres
@pytest.mark.slow
def test_three_workers_share_one_budget_exactly(tmp_path, data, pg_study):
    workers = []
    for i in range(3):
        (tmp_path / str(i)).mkdir()
        args = _args(
            tmp_path / str(i),
            data,
            pg_study,
            PG_URL,
            "--trials",
            "7",
            "--epochs",
            "40",
            "--no-prune",
        )
        workers.append(_start(args, tmp_path / f"w{i}.log"))
    codes = [w.wait(timeout=300) for w in workers]
    assert codes == [0, 0, 0], [(tmp_path / f"w{i}.log").read_text()[-2000:] for i in range(3)]
    trials = optuna.load_study(study_name=pg_study, storage=PG_URL).get_trials()
    assert sorted(t.number for t in trials) == list(range(7))
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    # The trials really were spread over the workers.
    ran = [(tmp_path / f"w{i}.log").read_text().count(" COMPLETE ") for i in range(3)]
    assert sum(1 for n in ran if n) >= 2, ran


@postgres
@pytest.mark.postgres
@pytest.mark.slow
def test_killed_workers_trial_fails_and_is_retried_with_its_params(tmp_path, data, pg_study):
    slow = ("--trials", "1", "--epochs", "2000", "--heartbeat", "1", "--no-prune")
    victim = _start(_args(tmp_path, data, pg_study, PG_URL, *slow), tmp_path / "victim.log")
    running = _wait_running(PG_URL, pg_study)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    doomed = _trial(PG_URL, pg_study, running.number)  # its params as the kill left them
    survivor = _start(
        _args(
            tmp_path, data, pg_study, PG_URL, "--trials", "1", "--epochs", "2", "--heartbeat", "1"
        ),
        tmp_path / "survivor.log",
    )
    assert survivor.wait(timeout=180) == 0, (tmp_path / "survivor.log").read_text()[-3000:]
    trials = optuna.load_study(study_name=pg_study, storage=PG_URL).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[0].number == doomed.number
    retry = trials[1]
    assert retry.params == doomed.params and set(retry.params) == SPACE
    assert retry.system_attrs["failed_trial"] == doomed.number


def _interrupt_then_resume(
    tmp_path: Path, data, name: str, storage: str, wandb: str = "disabled"
) -> None:
    slow = ("--trials", "2", "--epochs", "2000", "--no-prune", "--wandb-mode", wandb)
    worker = _start(_args(tmp_path, data, name, storage, *slow), tmp_path / "first.log")
    _wait_running(storage, name)
    worker.send_signal(signal.SIGINT)
    assert worker.wait(timeout=60) == 130
    printed = (tmp_path / "first.log").read_text()
    assert "FAIL" in printed and "interrupted" in printed and "ended by interrupted" in printed
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    interrupted = trials[0]
    assert interrupted.state == TrialState.FAIL
    assert "interrupted" in interrupted.user_attrs["fail_reason"]
    if wandb == "offline":  # the interrupted trial's W&B run was closed, as failed
        (run,) = [r for r in offline_runs(tmp_path / "runs" / name) if r.job_type == "trial"]
        assert run.exit_code is not None and run.summary["trial_state"] == "failed"
    # The same command resumes: the interrupted trial's params run again, 2 trials counted.
    again = _start(
        _args(tmp_path, data, name, storage, *slow[:2], "--epochs", "2"), tmp_path / "second.log"
    )
    assert again.wait(timeout=180) == 0, (tmp_path / "second.log").read_text()[-3000:]
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    done = [t for t in trials if t.state != TrialState.FAIL]
    assert len(done) == 2
    retry = next(t for t in done if t.system_attrs.get("failed_trial") == interrupted.number)
    assert retry.params == interrupted.params and retry.user_attrs["fail_reason"] is None
    assert len({str(t.params) for t in done}) == 2  # the resumed run drew new params


@postgres
@pytest.mark.postgres
@pytest.mark.slow
def test_ctrl_c_fails_the_trial_in_flight_and_the_study_resumes(tmp_path, data, pg_study):
    _interrupt_then_resume(tmp_path, data, pg_study, PG_URL)


@pytest.mark.slow
def test_ctrl_c_on_sqlite_closes_the_wandb_run_and_resumes(tmp_path, data):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    _interrupt_then_resume(tmp_path, data, "tiny", storage, wandb="offline")


@pytest.mark.slow
def test_two_processes_share_one_sqlite_file_without_lock_errors(tmp_path, data):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    workers = []
    for i in range(2):
        (tmp_path / str(i)).mkdir()
        workers.append(
            _start(
                _args(tmp_path / str(i), data, "shared", storage, "--trials", "6"),
                tmp_path / f"w{i}.log",
            )
        )
    logs = [(tmp_path / f"w{i}.log") for i in range(2)]
    assert [w.wait(timeout=300) for w in workers] == [0, 0], [p.read_text()[-2000:] for p in logs]
    assert not any("database is locked" in p.read_text() for p in logs)
    trials = optuna.load_study(study_name="shared", storage=storage).get_trials()
    assert sorted(t.number for t in trials) == list(range(6))
