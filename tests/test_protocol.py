"""The 3-split protocol: bootstrap interval maths and per-split refits on a tiny synthetic set."""

from __future__ import annotations

import json
import statistics

import numpy as np
import optuna
import pytest
from study_fixtures import study_args, write_tiny_data

import run_study
from datasets.splits import TEST_GROUPS
from search.protocol import bootstrap_interval
from search.refit import AVERAGE_LAST


def test_bootstrap_interval_of_a_constant_is_that_constant():
    assert bootstrap_interval(np.ones(40)) == (1.0, 1.0)
    assert bootstrap_interval(np.zeros(40)) == (0.0, 0.0)


def test_bootstrap_interval_matches_the_normal_approximation():
    # 200 clips at 50%: standard error sqrt(.5 * .5 / 200) = 0.0354, so about 0.5 -+ 0.0693.
    low, high = bootstrap_interval(np.repeat([1.0, 0.0], 100), draws=4000, seed=1)
    assert low == pytest.approx(0.5 - 0.0693, abs=0.01)
    assert high == pytest.approx(0.5 + 0.0693, abs=0.01)


def test_bootstrap_interval_is_seeded():
    correct = np.random.default_rng(0).random(50) < 0.7
    assert bootstrap_interval(correct, seed=3) == bootstrap_interval(correct, seed=3)


def test_evaluate_scores_each_split_and_reports_their_mean_and_std(
    tmp_path, capsys, one_torch_thread
):
    data = write_tiny_data(tmp_path)  # 25 clips per class: one in every group 1-25
    args = study_args(tmp_path, data, "--trials", "2", "--no-prune")
    assert run_study.main(args) == 0
    flags = args[: args.index("--wandb-mode")]
    capsys.readouterr()
    assert run_study.main(["evaluate", "--splits", "1", "2", "3", "--draws", "200", *flags]) == 0
    out = capsys.readouterr().out

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'study.db'}")
    record = study.user_attrs["protocol"]
    final = json.loads((tmp_path / "runs" / "tiny" / "final.json").read_text())
    assert final["protocol"] == record
    assert "refit" in final  # the study's own final score is kept beside it
    assert record["trial_number"] == study.best_trial.number
    assert record["epochs"] == study.best_trial.user_attrs["best_epoch"]
    assert record["averaged_epochs"] == min(AVERAGE_LAST, record["epochs"])
    assert [s["split"] for s in record["splits"]] == [1, 2, 3]
    scores = [s["top1"] for s in record["splits"]]
    assert record["mean_top1"] == pytest.approx(statistics.fmean(scores))
    assert record["std_top1"] == pytest.approx(statistics.stdev(scores))
    for s in record["splits"]:
        test_groups = len(TEST_GROUPS[s["split"]])
        assert s["test_clips"] == 3 * test_groups  # 3 classes, one clip per test group
        assert s["train_clips"] == 3 * (25 - test_groups)  # every other group, val included
        low, high = s["interval95"]
        assert 0.0 <= low <= s["top1"] <= high <= 1.0
        assert f"split {s['split']}: test top-1 {s['top1']:.4f}" in out
    assert f"{record['mean_top1']:.4f} +- {record['std_top1']:.4f}" in out
