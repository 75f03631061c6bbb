"""optuna-dashboard serves our studies: trials, learning curves, artifacts, while trials run."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
from study_factory import SPACE, curve, make_study
from study_fixtures import study_args, write_tiny_data

import run_study
from search.artifacts import attach_best_artifacts

START_TIMEOUT_S = 30.0


def _dashboard_command() -> str:
    beside_python = Path(sys.executable).parent / "optuna-dashboard"
    found = str(beside_python) if beside_python.exists() else shutil.which("optuna-dashboard")
    if found is None:
        pytest.fail("optuna-dashboard is not installed; pip install -r requirements.txt")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, dict(response.headers), response.read()


def _get_json(url: str) -> dict:
    status, _, body = _get(url)
    assert status == 200, url
    return json.loads(body)


@contextmanager
def dashboard(storage_url: str, artifact_dir: Path, log_path: Path) -> Iterator[str]:
    """Run optuna-dashboard on a free port; yield its base URL; always stop it."""
    port = _free_port()
    command = [
        _dashboard_command(), storage_url,
        "--host", "127.0.0.1", "--port", str(port), "--artifact-dir", str(artifact_dir),
    ]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if process.poll() is not None:
                    pytest.fail(f"optuna-dashboard exited early:\n{log_path.read_text()}")
                try:
                    _get(f"{base}/api/meta", timeout=1.0)
                    break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    if time.monotonic() > deadline:
                        pytest.fail(f"optuna-dashboard did not answer in {START_TIMEOUT_S} s")
                    time.sleep(0.1)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def served_study(tmp_path):
    """A factory study with the best trial's files and a running trial's file attached."""
    storage_url = f"sqlite:///{tmp_path / 'study.db'}"
    study = make_study(storage_url)
    artifact_dir = tmp_path / "artifacts"
    png = tmp_path / "confusion.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nnot really an image")
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(bytes(range(256)) * 40)
    best_ids = attach_best_artifacts(study, study.best_trial.number, [png, ckpt], artifact_dir)
    running = study.ask(SPACE)
    running.report(0.2, 1)
    (running_id,) = attach_best_artifacts(study, running, [png], artifact_dir)
    with dashboard(storage_url, artifact_dir, tmp_path / "dashboard.log") as base:
        yield {
            "base": base,
            "study": study,
            "best_ids": best_ids,
            "running": running,
            "running_id": running_id,
            "files": {"png": png, "ckpt": ckpt},
        }


def _study_detail(served) -> tuple[int, dict]:
    summaries = _get_json(f"{served['base']}/api/studies")["study_summaries"]
    (summary,) = [s for s in summaries if s["study_name"] == served["study"].study_name]
    study_id = summary["study_id"]
    return study_id, _get_json(f"{served['base']}/api/studies/{study_id}")


def test_dashboard_lists_the_study_with_its_trials_and_their_learning_curves(served_study):
    study = served_study["study"]
    _, detail = _study_detail(served_study)
    trials = {t["number"]: t for t in detail["trials"]}
    assert {n: t["state"] for n, t in trials.items()} == {
        0: "Complete", 1: "Complete", 2: "Pruned", 3: "Complete", 4: "Fail", 5: "Pruned",
        6: "Running",
    }  # fmt: skip
    curve0 = [(v["step"], v["value"]) for v in trials[0]["intermediate_values"]]
    assert curve0 == list(enumerate(curve(0, 5), start=1))
    assert [t["number"] for t in detail["best_trials"]] == [study.best_trial.number]
    prune_attr = next(a for a in trials[2]["user_attrs"] if a["key"] == "prune_reason")
    assert json.loads(prune_attr["value"])["epoch"] == 2
    assert detail["has_intermediate_values"] is True


def test_dashboard_lists_and_serves_the_attached_files_byte_for_byte(served_study):
    base, files = served_study["base"], served_study["files"]
    best = served_study["study"].best_trial.number
    study_id, detail = _study_detail(served_study)

    listed = {a["artifact_id"]: a for a in detail["artifacts"]}
    assert sorted(listed) == sorted(served_study["best_ids"])
    png_id, ckpt_id = served_study["best_ids"]
    assert listed[png_id]["filename"] == f"trial{best}-confusion.png"
    assert listed[png_id]["mimetype"] == "image/png"

    status, headers, body = _get(f"{base}/artifacts/{study_id}/{png_id}")
    assert (status, headers["Content-Type"]) == (200, "image/png")
    assert body == files["png"].read_bytes()
    assert _get(f"{base}/artifacts/{study_id}/{ckpt_id}")[2] == files["ckpt"].read_bytes()

    running = next(t for t in detail["trials"] if t["state"] == "Running")
    assert [a["artifact_id"] for a in running["artifacts"]] == [served_study["running_id"]]
    trial_url = f"{base}/artifacts/{study_id}/{running['trial_id']}/{served_study['running_id']}"
    assert _get(trial_url)[2] == files["png"].read_bytes()


@pytest.mark.slow
def test_dashboard_reading_a_live_sqlite_study_does_not_fail_trials(tmp_path):
    storage_url = f"sqlite:///{tmp_path / 'live.db'}"
    study = optuna.create_study(storage=storage_url, study_name="live", direction="maximize")
    n_trials = 10
    polls: list[int] = []
    errors: list[str] = []
    stop = threading.Event()

    def poll(base: str) -> None:
        while not stop.is_set():
            try:
                _, detail = _study_detail({"base": base, "study": study})
                polls.append(len(detail["trials"]))
            except Exception as e:  # any failure to serve is what this test looks for
                errors.append(repr(e))
            time.sleep(0.01)  # far more often than the dashboard's page polls

    with dashboard(storage_url, tmp_path / "artifacts", tmp_path / "dashboard.log") as base:
        poller = threading.Thread(target=poll, args=(base,), daemon=True)
        poller.start()
        try:
            for _ in range(n_trials):
                trial = study.ask(SPACE)
                for epoch, value in enumerate(curve(trial.number, 3), start=1):
                    trial.report(value, epoch)
                trial.set_user_attr("epochs_run", 3)
                study.tell(trial, max(curve(trial.number, 3)))
            # The dashboard caches a study's trials for 2 s (optuna_dashboard/_storage.py).
            deadline = time.monotonic() + 6.0
            while (not polls or polls[-1] < n_trials) and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            stop.set()
            poller.join(timeout=15)

    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states == [optuna.trial.TrialState.COMPLETE] * n_trials
    assert errors == []
    assert len(polls) >= 3 and polls[-1] == n_trials
    assert polls == sorted(polls)  # the dashboard never saw trials disappear


@pytest.mark.slow
def test_dashboard_serves_a_study_made_by_a_tiny_run(tmp_path):

    data = write_tiny_data(tmp_path)
    assert run_study.main(study_args(tmp_path, data, "--trials", "3")) == 0
    storage_url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    artifact_dir = tmp_path / "runs" / "tiny" / "artifacts"
    with dashboard(storage_url, artifact_dir, tmp_path / "dashboard.log") as base:
        served = {"base": base, "study": study}
        study_id, detail = _study_detail(served)
        trials = {t["number"]: t for t in detail["trials"]}
        assert sorted(trials) == [0, 1, 2]
        for t in study.trials:
            steps = [(v["step"], v["value"]) for v in trials[t.number]["intermediate_values"]]
            assert steps == sorted(t.intermediate_values.items())
            keys = {a["key"] for a in trials[t.number]["user_attrs"]}
            assert {"manifest", "wandb_run", "param_count"} <= keys
        best = trials[study.best_trial.number]
        by_name = {a["filename"]: a["artifact_id"] for a in best["artifacts"]}
        assert set(by_name) == {"best.pt", f"trial-{study.best_trial.number}-val-confusion.png"}
        url = f"{base}/artifacts/{study_id}/{best['trial_id']}/{by_name['best.pt']}"
        assert _get(url)[2] == (artifact_dir / by_name["best.pt"]).read_bytes()
