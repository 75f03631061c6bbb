"""Optuna's plots of a study, built once (search/study_plots.py) for W&B and the HTML report."""

from __future__ import annotations

import optuna
import pytest

from search.study_plots import (
    NEEDS_A_COMPLETE_TRIAL,
    NEEDS_TWO_COMPLETE_TRIALS,
    PLOTS,
    TARGET_NAME,
    study_plots,
)


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(values: list[float], directions: tuple[str, ...] = ("maximize",)) -> optuna.Study:
    study = optuna.create_study(directions=list(directions), study_name="plots")
    for i, value in enumerate(values):
        trial = study.ask()
        trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        trial.suggest_int("hidden", 8, 64)
        trial.report(value / 2, 1)
        study.tell(trial, value if len(directions) == 1 else [value, float(i)])
    return study


def test_every_plot_is_drawn_against_validation_top1_once_two_trials_complete():
    plots = study_plots(_study([0.2, 0.4, 0.3]))
    assert set(plots.figures) == set(PLOTS) and not plots.missing
    history = plots.figures["optimization_history"]
    assert history.layout.yaxis.title.text == TARGET_NAME
    assert sorted(history.data[0].y) == pytest.approx([0.2, 0.3, 0.4])


def test_plots_that_need_completed_trials_say_so_instead_of_drawing_nothing():
    running = optuna.create_study(study_name="plots")
    running.ask()
    plots = study_plots(running)
    assert plots.missing == {
        "optimization_history": NEEDS_A_COMPLETE_TRIAL,
        "parallel_coordinate": NEEDS_A_COMPLETE_TRIAL,
        "param_importances": NEEDS_TWO_COMPLETE_TRIALS,
        "slice": NEEDS_A_COMPLETE_TRIAL,
    }
    assert set(plots.figures) == {"intermediate_values"}
    one = study_plots(_study([0.2]), ("optimization_history", "param_importances"))
    assert set(one.figures) == {"optimization_history"}
    assert one.missing == {"param_importances": NEEDS_TWO_COMPLETE_TRIALS}


def test_a_plot_optuna_cannot_draw_is_explained_and_the_others_are_kept(monkeypatch, caplog):
    def broken(study, **kwargs):
        raise RuntimeError("no parameter varies")

    monkeypatch.setattr(optuna.visualization, "plot_param_importances", broken)
    plots = study_plots(_study([0.2, 0.4]), ("optimization_history", "param_importances"))
    assert set(plots.figures) == {"optimization_history"}
    assert plots.missing == {
        "param_importances": "Not available for this study yet: no parameter varies"
    }
    assert "Optuna plot param_importances failed" in caplog.text


def test_an_unknown_plot_name_is_refused():
    with pytest.raises(ValueError, match="unknown Optuna plot"):
        study_plots(_study([0.2]), ("contour",))
