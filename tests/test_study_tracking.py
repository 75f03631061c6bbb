"""A real study in W&B offline mode, read back from the run files wandb wrote."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState
from study_fixtures import study_args, write_tiny_data
from wandb_offline import offline_runs, read_table

import run_study


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_data(tmp_path_factory.mktemp("shards"))


def _offline_args(root, data, *extra):
    args = study_args(root, data, *extra)
    args[args.index("--wandb-mode") + 1] = "offline"
    return args


def _study(root) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{root / 'study.db'}")


@pytest.mark.slow
def test_every_trial_logs_one_closed_run_with_its_state(tmp_path, data, capsys):
    assert run_study.main(_offline_args(tmp_path, data, "--trials", "3")) == 0
    study = _study(tmp_path)
    # One diverging trial (pruned at once) and one too big to allocate (failed).
    study.enqueue_trial({"cell": "gru", "layers": 1, "hidden": 8, "lr": 1e6, "clip_norm": 1.0})
    study.enqueue_trial({"cell": "gru", "layers": 1, "hidden": 10**7, "lr": 1e-3, "clip_norm": 1.0})
    # And one the median rule stops: it cannot learn.
    study.enqueue_trial({"cell": "gru", "layers": 1, "hidden": 8, "lr": 1e-9, "clip_norm": 1.0})
    assert run_study.main(_offline_args(tmp_path, data, "--trials", "6")) == 0
    out = capsys.readouterr().out
    trials = _study(tmp_path).trials
    assert [t.state for t in trials[3:]] == [TrialState.PRUNED, TrialState.FAIL, TrialState.PRUNED]

    runs = offline_runs(tmp_path / "runs" / "tiny")
    by_name = {r.name: r for r in runs if r.job_type == "trial"}
    assert sorted(by_name) == [f"trial-{n}" for n in range(6)]
    for t in trials:
        run = by_name[f"trial-{t.number}"]
        assert run.group == "tiny" and run.project == "tiny-tests"
        assert run.exit_code is not None, "run left open"
        assert t.user_attrs["wandb_run"] == str(run.dir)
        for key, value in t.params.items():
            assert run.config[key] == value
        assert {
            "batch_size",
            "epochs_budget",
            "data_fingerprint",
            "split",
            "device",
            "seed",
        } <= set(run.config)
        # The pruner's values, at the pruner's steps.
        logged = {row["epoch"]: v for v, row in run.column("val/top1")}
        assert logged == {int(k): v for k, v in t.intermediate_values.items()}
    assert by_name["trial-3"].summary["trial_state"] == "pruned"
    dull = by_name["trial-5"].summary
    assert dull["trial_state"] == "pruned"
    assert dull["best_val_top1"] == pytest.approx(max(trials[5].intermediate_values.values()))
    assert dull["prune/median"] > dull["prune/value"] and dull["pruned_epoch"] >= 1
    assert "loss exploded" in by_name["trial-3"].summary["prune/text"]
    assert by_name["trial-4"].summary["trial_state"] == "failed"
    assert by_name["trial-4"].exit_code == 1
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    for t in complete:
        summary = by_name[f"trial-{t.number}"].summary
        assert summary["trial_state"] == "complete"
        assert summary["best_val_top1"] == pytest.approx(t.value)

    study_runs = [r for r in runs if r.job_type == "study"]
    assert study_runs and all(r.group == "tiny" for r in study_runs)
    (table_file,) = sorted(study_runs[-1].dir.rglob("files/media/table/**/trials*.table.json"))
    table = read_table(table_file)
    assert sorted(row["number"] for row in table) == list(range(6))
    assert "wandb sync" in out


@pytest.mark.slow
def test_concurrent_trials_keep_their_metrics_apart(tmp_path, data):
    assert (
        run_study.main(_offline_args(tmp_path, data, "--trials", "2", "--jobs", "2", "--no-prune"))
        == 0
    )
    trials = _study(tmp_path).trials
    runs = {r.name: r for r in offline_runs(tmp_path / "runs" / "tiny") if r.job_type == "trial"}
    assert len(runs) == 2
    for t in trials:
        run = runs[f"trial-{t.number}"]
        assert run.config["trial_number"] == t.number
        logged = {row["epoch"]: v for v, row in run.column("val/top1")}
        assert logged == {int(k): v for k, v in t.intermediate_values.items()}
