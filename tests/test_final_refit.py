"""Refit before the test: the best configuration retrained on train + validation, scored once."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
from study_fixtures import study_args, write_tiny_data

import run_study
import search.refit
from datasets.splits import SplitSpec, split_parts
from models.training import TrainingDiverged
from search.definition import load_definition
from search.refit import AVERAGE_LAST
from search.study_data import load_study_data


@pytest.fixture
def refit_calls(monkeypatch):
    """Record (train clips, epochs, validation loader) of every refit's training run."""
    calls = []
    real_train = search.refit.train

    def spy(model, train_loader, val_loader, config, **kw):
        calls.append((np.asarray(train_loader.indices).copy(), config.epochs, val_loader))
        return real_train(model, train_loader, val_loader, config, **kw)

    monkeypatch.setattr(search.refit, "train", spy)
    return calls


def test_refit_trains_on_train_and_val_clips_for_best_epochs_and_scores_test_once(
    tmp_path, refit_calls, monkeypatch, one_torch_thread
):
    data = write_tiny_data(tmp_path)
    args = study_args(tmp_path, data, "--trials", "2", "--no-prune")
    assert run_study.main(args) == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'study.db'}")
    definition = load_definition(args[args.index("--study") + 1])
    parts = split_parts(
        load_study_data(definition.data, data, False).features.filenames,
        SplitSpec(split=1, val_groups=4),
    )
    final = study.user_attrs["final"]
    best = study.best_trial
    ((clips, epochs, val_loader),) = refit_calls
    assert val_loader is None  # nothing held out: the last epoch's weights are the model
    assert sorted(clips) == sorted([*parts["train"], *parts["val"]])
    assert epochs == best.user_attrs["best_epoch"]
    refit = final["refit"]
    assert refit["epochs"] == epochs and refit["train_clips"] == len(clips)
    assert refit["averaged_epochs"] == min(AVERAGE_LAST, epochs)
    assert refit["test"]["examples"] == len(parts["test"]) == final["test"]["examples"]
    assert 0.0 <= refit["test"]["top1"] <= 1.0
    on_disk = json.loads((tmp_path / "runs" / "tiny" / "final.json").read_text())
    assert on_disk["refit"] == refit and on_disk["test"] == final["test"]

    # The same command again (no trial left to run) reads the scores and trains nothing.
    assert run_study.main(args) == 0
    assert len(refit_calls) == 1
    assert study.user_attrs["final"] == final


def test_final_scored_before_refit_existed_gains_the_refit_and_keeps_its_test_score(
    tmp_path, refit_calls, one_torch_thread
):
    data = write_tiny_data(tmp_path)
    args = study_args(tmp_path, data, "--trials", "2", "--no-prune")
    assert run_study.main(args) == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'study.db'}")
    old = {k: v for k, v in study.user_attrs["final"].items() if k != "refit"}
    study.set_user_attr("final", old)
    assert run_study.main(args) == 0
    final = study.user_attrs["final"]
    assert len(refit_calls) == 2
    assert final["test"] == old["test"] and final["refit"]["epochs"] >= 1


def test_a_diverging_refit_is_recorded_and_the_search_models_score_stands(
    tmp_path, monkeypatch, one_torch_thread
):
    def diverge(*args, **kwargs):
        raise TrainingDiverged("loss became nan at epoch 1 step 1", epoch=1, step=1)

    monkeypatch.setattr(search.refit, "train", diverge)
    data = write_tiny_data(tmp_path)
    assert run_study.main(study_args(tmp_path, data, "--trials", "1", "--no-prune")) == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'study.db'}")
    final = study.user_attrs["final"]
    assert final["refit"]["diverged"].startswith("loss became nan")
    assert final["refit"]["test"] is None and 0.0 <= final["test"]["top1"] <= 1.0
    page = (tmp_path / "runs" / "tiny" / "report.html").read_text()
    assert "The refit on all training groups diverged: loss became nan" in page
