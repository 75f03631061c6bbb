"""The end of a study: one worker wraps it up (test scores, baseline, one W&B study run)."""

from __future__ import annotations

import json

import optuna
import pytest
from study_fixtures import study_args, write_tiny_data
from wandb_offline import offline_runs

import run_study
import search.final
import search.objective
from models.training import TrainingDiverged
from search.storage import open_storage
from search.tracking import STUDY_RUN_ATTR

SCORING_INTERRUPTED = (
    "interrupted while scoring the best trial on the test groups; run the "
    "same command again to score it"
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_data(tmp_path_factory.mktemp("shards"))


def _args(root, data, *extra, storage=None):
    args = study_args(root, data, "--wandb-mode", "offline", "--epochs", "2", *extra)
    if storage:
        args[args.index("--storage") + 1] = storage
    return args


def _study(root, storage=None) -> optuna.Study:
    url = storage or f"sqlite:///{root / 'study.db'}"
    return optuna.load_study(study_name="tiny", storage=open_storage(url))


def _study_runs(root):
    return [r for r in offline_runs(root / "runs" / "tiny") if r.job_type == "study"]


def _spy_scoring(monkeypatch) -> list[bool]:
    """Record, for each call of score_best, whether it scored the test groups itself."""
    calls: list[bool] = []
    real = search.final.score_best

    def spy(*args, **kwargs):
        final, scored_here = real(*args, **kwargs)
        calls.append(scored_here)
        return final, scored_here

    monkeypatch.setattr(search.final, "score_best", spy)
    return calls


@pytest.mark.slow
def test_a_rerun_of_a_finished_study_writes_no_second_study_run_and_scores_nothing(
    tmp_path, data, capsys, monkeypatch
):
    scorings = _spy_scoring(monkeypatch)
    assert run_study.main(_args(tmp_path, data, "--trials", "2")) == 0
    first = capsys.readouterr().out
    final = _study(tmp_path).user_attrs["final"]
    assert scorings == [True] and "test groups (trial" in first and "scored earlier" not in first
    assert run_study.main(_args(tmp_path, data, "--trials", "2")) == 0  # budget already met
    again = capsys.readouterr().out
    assert scorings == [True], "the test groups were scored again"
    assert "scored earlier" in again
    assert _study(tmp_path).user_attrs["final"] == final
    (run,) = _study_runs(tmp_path)
    assert run.id == _study(tmp_path).user_attrs[STUDY_RUN_ATTR]["id"]
    assert run.summary["n_trials"] == 2 and run.summary["final/test/top1"] == final["test"]["top1"]


@pytest.mark.slow
def test_only_the_last_worker_to_finish_writes_the_study_run(tmp_path, data, capsys):
    # Journal storage: no heartbeat, so a trial another worker holds RUNNING stays so.
    storage = f"journal:///{tmp_path / 'study.log'}"
    assert run_study.main(_args(tmp_path, data, "--trials", "1", storage=storage)) == 0
    capsys.readouterr()
    study = _study(tmp_path, storage)
    other = study.ask()  # another worker's trial, still running when this worker ends
    assert run_study.main(_args(tmp_path, data, "--trials", "3", storage=storage)) == 0
    out = capsys.readouterr().out
    assert "left to the last worker to finish" in out
    assert len(_study_runs(tmp_path)) == 1, "a worker that was not the last wrote a study run"
    study.tell(other, 0.0)  # the other worker finishes: it is the last one
    assert run_study.main(_args(tmp_path, data, "--trials", "3", storage=storage)) == 0
    out = capsys.readouterr().out
    assert "left to the last worker" not in out
    runs = _study_runs(tmp_path)
    assert len(runs) == 2 and runs[0].id == runs[1].id  # one W&B run, updated
    assert runs[1].summary["n_trials"] == 3
    assert (
        _study(tmp_path, storage).user_attrs["final"]["trial_number"]
        == _study(tmp_path, storage).best_trial.number
    )


@pytest.mark.slow
def test_an_interrupted_worker_writes_no_study_run_and_scores_nothing(
    tmp_path, data, capsys, monkeypatch
):
    real = search.objective.objective
    calls = []

    def interrupted_second_trial(trial, settings, stop):
        calls.append(trial.number)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(trial, settings, stop)

    monkeypatch.setattr(search.objective, "objective", interrupted_second_trial)
    assert run_study.main(_args(tmp_path, data, "--trials", "3")) == 130
    out = capsys.readouterr().out
    assert "ended by interrupted" in out and "not written (interrupted)" in out
    assert _study_runs(tmp_path) == []
    assert "final" not in _study(tmp_path).user_attrs
    trial_runs = [r for r in offline_runs(tmp_path / "runs" / "tiny") if r.job_type == "trial"]
    assert len(trial_runs) == 1 and trial_runs[0].exit_code is not None


@pytest.mark.slow
def test_ctrl_c_while_scoring_says_so_exits_130_and_the_same_command_scores_it(
    tmp_path, data, capsys, monkeypatch
):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(search.final, "score_best", interrupted)
    assert run_study.main(_args(tmp_path, data, "--trials", "1")) == 130
    err = capsys.readouterr().err
    assert SCORING_INTERRUPTED in err and "before any trial started" not in err
    assert "final" not in _study(tmp_path).user_attrs and _study_runs(tmp_path) == []
    monkeypatch.undo()
    assert run_study.main(_args(tmp_path, data, "--trials", "1")) == 0
    assert "final" in _study(tmp_path).user_attrs
    assert len(_study_runs(tmp_path)) == 1


@pytest.mark.slow
def test_a_diverging_baseline_is_recorded_with_its_reason_and_the_run_finishes(
    tmp_path, data, capsys, monkeypatch
):
    real = search.final.train

    def bag_diverges(model, *args, **kwargs):
        if type(model).__name__ == "BagOfFrames":
            raise TrainingDiverged("training loss is nan at step 4; lower lr", epoch=1, step=4)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(search.final, "train", bag_diverges)
    assert run_study.main(_args(tmp_path, data, "--trials", "1")) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    baseline = _study(tmp_path).user_attrs["baseline"]
    assert baseline["bag_of_frames_val_top1"] is None
    assert "loss is nan" in baseline["diverged"]
    assert f"bag-of-frames baseline: diverged ({baseline['diverged']})" in out
    assert "test groups (trial" in out  # the best trial was still scored
    final = json.loads((tmp_path / "runs" / "tiny" / "final.json").read_text())
    assert final["trial_number"] == _study(tmp_path).best_trial.number


@pytest.mark.slow
def test_evaluate_afterwards_updates_the_same_study_run_with_the_protocol(tmp_path, data, capsys):
    args = _args(tmp_path, data, "--trials", "2", "--no-prune")
    assert run_study.main(args) == 0
    flags = args[: args.index("--wandb-mode")]  # the flags evaluate shares with the study
    assert run_study.main(["evaluate", "--splits", "1", "--draws", "50", *flags]) == 0
    out = capsys.readouterr().out
    record = _study(tmp_path).user_attrs["protocol"]
    first, second = _study_runs(tmp_path)
    assert first.id == second.id, "evaluate started a second study run"
    assert f"W&B study run updated: {second.dir}" in out
    assert second.summary["protocol/mean_top1"] == pytest.approx(record["mean_top1"])
    assert "protocol/mean_top1" not in first.summary
    splits = [p for p in second.dir.rglob("files/media/table/protocol/splits*.table.json")]
    assert len(splits) == 1
