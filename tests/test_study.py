"""run_study.py end to end on tiny synthetic data: trials, pruning, resuming, reproducibility."""

from __future__ import annotations

import json
import math

import optuna
import pytest
import torch
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState
from study_fixtures import TINY_DEFINITION, study_args, write_definition, write_tiny_data

import run_study
from datasets.synthetic import write_synthetic
from search import optuna_internals


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_data(tmp_path_factory.mktemp("shards"))


def _load(root, name="tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{root / 'study.db'}")


@pytest.mark.slow
def test_four_trial_study_runs_end_to_end(tmp_path, data, capsys):
    assert run_study.main(study_args(tmp_path, data, "--trials", "4")) == 0
    out = capsys.readouterr().out
    study = _load(tmp_path)
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    for t in complete:
        assert sorted(t.intermediate_values) == [1, 2, 3]
        assert t.value == max(t.intermediate_values.values())
        attrs = t.user_attrs
        assert attrs["examples_per_s"] > 0 and attrs["param_count"] > 0
        assert attrs["epochs_run"] == 3 and attrs["wall_s"] > 0
        manifest = attrs["manifest"]
        assert manifest["data_fingerprint"] == study.user_attrs["data_fingerprint"]
        assert manifest["device"] == "cpu" and manifest["torch"]
        assert set(manifest) >= {"seed", "git_commit", "cuda", "cudnn"}
    # The final answer: the best trial scored once on the test groups, saved next to the study.
    final = study.user_attrs["final"]
    assert final["trial_number"] == study.best_trial.number
    assert 0.0 <= final["test"]["top1"] <= final["test"]["top5"] <= 1.0
    runs = tmp_path / "runs" / "tiny"
    assert json.loads((runs / "final.json").read_text())["trial_number"] == final["trial_number"]
    assert (runs / "best.pt").exists() and (runs / "report.html").exists()
    assert "bag_of_frames_val_top1" in study.user_attrs["baseline"]
    # The best trial carries its own checkpoint and confusion matrix as Optuna artifacts.
    served = {
        m.filename
        for m in get_all_artifact_meta(study.best_trial, storage=optuna_internals.storage(study))
    }
    assert served == {"best.pt", f"trial-{study.best_trial.number}-val-confusion.png"}
    study_files = {
        m.filename for m in get_all_artifact_meta(study, storage=optuna_internals.storage(study))
    }
    assert f"trial{study.best_trial.number}-test-confusion.png" in study_files
    # What a person reads: one line per trial and the dashboard command.
    for t in trials:
        assert f"trial {t.number:>3} {t.state.name}" in out
    assert f"optuna-dashboard sqlite:///{tmp_path / 'study.db'}" in out
    assert "best trial" in out and "test groups" in out


@pytest.mark.slow
def test_rerun_resumes_and_trials_counts_the_whole_study(tmp_path, data):
    assert run_study.main(study_args(tmp_path, data, "--trials", "2")) == 0
    assert len(_load(tmp_path).trials) == 2
    assert run_study.main(study_args(tmp_path, data, "--trials", "3")) == 0
    assert len(_load(tmp_path).trials) == 3
    assert run_study.main(study_args(tmp_path, data, "--trials", "3")) == 0
    assert [t.number for t in _load(tmp_path).trials] == [0, 1, 2]


@pytest.mark.slow
def test_trial_that_cannot_learn_is_pruned_with_the_median_it_trailed(tmp_path, data):
    assert run_study.main(study_args(tmp_path, data, "--trials", "3")) == 0
    study = _load(tmp_path)
    study.enqueue_trial({"cell": "gru", "layers": 1, "hidden": 8, "lr": 1e-9, "clip_norm": 1.0})
    assert run_study.main(study_args(tmp_path, data, "--trials", "4")) == 0
    dull = _load(tmp_path).trials[3]
    assert dull.params["lr"] == 1e-9
    assert dull.state == TrialState.PRUNED
    reason = dull.user_attrs["prune_reason"]
    assert reason["value"] < reason["median"] and reason["n_trials"] >= 2
    assert reason["epoch"] == max(dull.intermediate_values)


@pytest.fixture(scope="module")
def more_val_clips(tmp_path_factory):
    """Tiny clips, but enough per class that a paired test on validation can be significant."""
    out = tmp_path_factory.mktemp("shards-paired")
    write_synthetic(
        out, clips_per_class=100, frames=30, dim=16, classes=3, seed=3, shard_size=60, workers=1
    )
    return str(out / "*.tfrecord*")


@pytest.mark.slow
def test_paired_pruner_prunes_a_trial_that_cannot_learn_with_the_test_it_failed(
    tmp_path, more_val_clips
):
    def paired_args(trials: str) -> list[str]:
        args = study_args(tmp_path, more_val_clips, "--trials", trials)  # writes the definition
        write_definition(
            tmp_path,
            train={"max_epochs": 6, "patience": 0},
            space={
                **TINY_DEFINITION["space"],
                "batch_size": 8,
                "lr": {"low": 1e-2, "high": 3e-2, "log": True},
            },
            pruner={"kind": "paired", "startup_trials": 2, "warmup_epochs": 2},
        )
        return args

    assert run_study.main(paired_args("3")) == 0
    study = _load(tmp_path)
    for t in study.trials:  # every epoch's per-clip outcomes are on record for other workers
        assert t.user_attrs["val_num_classes"] == 3
        assert t.user_attrs["train_steps_per_epoch"] == 21  # 168 training clips, batch 8
        assert t.user_attrs["stopped_early"] is False and t.user_attrs["epochs_run"] == 6
        assert all(
            set(t.user_attrs[f"val_clips/{e}"]) == {"correct", "loss"}
            for e in t.intermediate_values
        )
    study.enqueue_trial({"cell": "gru", "layers": 1, "hidden": 8, "lr": 1e-9, "clip_norm": 1.0})
    assert run_study.main(paired_args("4")) == 0
    dull = _load(tmp_path).trials[3]
    assert dull.params["lr"] == 1e-9
    assert dull.state == TrialState.PRUNED
    reason = dull.user_attrs["prune_reason"]
    assert reason["kind"] == "paired" and reason["test"] == "exact one-sided McNemar"
    assert reason["p"] < reason["alpha"] == 0.001 and reason["reference_chance_p"] < 0.001
    assert reason["value"] < reason["reference_value"] and reason["gap"] > 2 * reason["noise"]
    assert reason["b"] > reason["c"] and reason["epoch"] == max(dull.intermediate_values) >= 2
    assert reason["reference_epoch"] == reason["epoch"]  # one batch size: equal steps, epochs


@pytest.mark.slow
def test_diverging_trial_is_pruned_at_once_with_its_reason(tmp_path, data):
    assert run_study.main(study_args(tmp_path, data, "--trials", "0")) == 0
    _load(tmp_path).enqueue_trial(
        {"cell": "lstm", "layers": 1, "hidden": 8, "lr": 1e6, "clip_norm": 5.0}
    )
    assert run_study.main(study_args(tmp_path, data, "--trials", "1")) == 0
    trial = _load(tmp_path).trials[0]
    assert trial.state == TrialState.PRUNED
    text = trial.user_attrs["prune_reason"]["text"]
    assert "loss exploded" in text and "lower the learning rate" in text


@pytest.mark.slow
def test_seeded_studies_give_the_same_trials(tmp_path, data):
    results = []
    for run in ("a", "b"):
        root = tmp_path / run
        root.mkdir()
        assert run_study.main(study_args(root, data, "--trials", "3", "--seed", "11")) == 0
        results.append([(t.params, t.value, t.state) for t in _load(root).trials])
    assert results[0] == results[1]
    assert all(v is not None and not math.isnan(v) for _, v, _ in results[0])


@pytest.mark.slow
def test_journal_file_storage_is_accepted(tmp_path, data):
    args = study_args(tmp_path, data, "--trials", "2")
    journal = tmp_path / "study.log"
    args[args.index("--storage") + 1] = f"journal:///{journal}"
    assert run_study.main(args) == 0
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    assert len(optuna.load_study(study_name="tiny", storage=storage).trials) == 2


@pytest.mark.slow
def test_final_score_is_the_same_when_the_best_trial_is_retrained(tmp_path, data):
    """A worker without the best trial's weights retrains it; on the CPU the seed makes it the
    same model, so the test score matches the one from the saved weights."""
    assert run_study.main(study_args(tmp_path, data, "--trials", "3", "--no-prune")) == 0
    study = _load(tmp_path)
    reloaded = study.user_attrs["final"]
    assert reloaded["weights"] == "reloaded"
    (tmp_path / "runs" / "tiny" / "best.pt").unlink()
    study.set_user_attr("final", None)
    assert run_study.main(study_args(tmp_path, data, "--trials", "3", "--no-prune")) == 0
    retrained = _load(tmp_path).user_attrs["final"]
    assert retrained["weights"] == "retrained"
    assert retrained["trial_number"] == reloaded["trial_number"]
    assert retrained["test"] == reloaded["test"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_two_trials_at_once_share_one_gpu(tmp_path, data):
    args = study_args(tmp_path, data, "--trials", "4", "--jobs", "2", "--no-prune")
    args[args.index("--device") + 1] = "cuda"
    assert run_study.main(args) == 0
    trials = _load(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert all(t.user_attrs["manifest"]["device"] != "cpu" for t in trials)
