"""The study command stops a run whose trials keep failing: exit 1 and the last reason."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState
from study_fixtures import study_args, write_tiny_data

import run_study
import search.objective


def test_failed_trials_in_a_row_end_the_command_with_exit_1_and_the_reason(
        tmp_path, monkeypatch, capsys):
    def broken(trial, settings, stop):
        trial.suggest_float("lr", 3e-3, 3e-2, log=True)
        raise KeyError("a systematic bug")

    monkeypatch.setattr(search.objective, "objective", broken)
    args = study_args(tmp_path, write_tiny_data(tmp_path), "--trials", "20",
                      "--max-failures", "2")
    assert run_study.main(args) == 1
    err = capsys.readouterr().err
    assert "stopped after 2 failed trials in a row" in err
    assert "KeyError: 'a systematic bug'" in err
    trials = optuna.load_study(study_name="tiny",
                               storage=f"sqlite:///{tmp_path / 'study.db'}").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]


def test_the_jobs_help_says_it_trades_reproducibility_for_speed(capsys):
    text = run_study.build_parser().format_help()
    assert "trades reproducibility for speed" in " ".join(text.split())
