"""The study command stops a run whose trials keep failing: exit 1 and the last reason."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState
from study_fixtures import TINY_DEFINITION, study_args, write_tiny_data

import run_study
import search.objective
from search.manifest import trial_seed


def test_failed_trials_in_a_row_end_the_command_with_exit_1_and_the_reason(
    tmp_path, monkeypatch, capsys
):
    def broken(trial, settings, stop):
        trial.suggest_float("lr", 3e-3, 3e-2, log=True)
        raise KeyError("a systematic bug")

    monkeypatch.setattr(search.objective, "objective", broken)
    args = study_args(tmp_path, write_tiny_data(tmp_path), "--trials", "20", "--max-failures", "2")
    assert run_study.main(args) == 1
    err = capsys.readouterr().err
    assert "stopped after 2 failed trials in a row" in err
    assert "KeyError: 'a systematic bug'" in err
    trials = optuna.load_study(
        study_name="tiny", storage=f"sqlite:///{tmp_path / 'study.db'}"
    ).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]


def test_the_jobs_help_says_it_trades_reproducibility_for_speed(capsys):
    text = run_study.build_parser().format_help()
    assert "trades reproducibility for speed" in " ".join(text.split())


@pytest.mark.slow
def test_jobs_2_still_records_each_trials_complete_params_and_seed(tmp_path):
    args = study_args(
        tmp_path,
        write_tiny_data(tmp_path),
        "--trials",
        "3",
        "--epochs",
        "2",
        "--jobs",
        "2",
        "--no-prune",
    )
    assert run_study.main(args) == 0
    trials = optuna.load_study(
        study_name="tiny", storage=f"sqlite:///{tmp_path / 'study.db'}"
    ).get_trials()
    searched = {k for k, v in TINY_DEFINITION["space"].items() if isinstance(v, dict)}
    assert sorted(t.number for t in trials) == [0, 1, 2]
    for t in trials:  # what a rerun with --jobs 1 needs: every param, and the trial's seed
        assert t.state == TrialState.COMPLETE and set(t.params) == searched
        assert t.user_attrs["manifest"]["seed"] == trial_seed(7, t.number)
