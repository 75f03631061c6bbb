"""Optuna's plots of a study, built in one place for the W&B study run and the HTML report."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # optuna and plotly cost seconds to import; only study_plots uses them
    import optuna

logger = logging.getLogger(__name__)

TARGET_NAME = "validation top-1"  # what the objective returns (search/objective.py)
PLOTS = (
    "optimization_history",
    "intermediate_values",
    "parallel_coordinate",
    "param_importances",
    "slice",
)
NEEDS_A_COMPLETE_TRIAL = "Appears once a trial has completed."
NEEDS_TWO_COMPLETE_TRIALS = "Needs at least two completed trials."


@dataclass(frozen=True)
class StudyPlots:
    """Plotly figures by plot name, and for each plot not drawn a sentence saying why."""

    figures: Mapping[str, Any]  # name -> plotly.graph_objects.Figure
    missing: Mapping[str, str]


def study_plots(study: optuna.Study, names: Sequence[str] = PLOTS) -> StudyPlots:
    """Return the named Optuna plots of the study; a plot that cannot be drawn says why instead.

    A plot over completed trials needs one (importances need two, to compare) and a single
    objective; one that fails inside Optuna is logged and left out, never losing the others.
    """
    import optuna
    import optuna.visualization as vis

    unknown = sorted(set(names) - set(PLOTS))
    if unknown:
        raise ValueError(f"unknown Optuna plot(s) {unknown}; known: {', '.join(PLOTS)}")
    single = len(study.directions) == 1
    complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    target = {"target_name": TARGET_NAME}
    makers: dict[str, tuple[Callable[[], Any], str | None]] = {
        "optimization_history": (
            lambda: vis.plot_optimization_history(study, **target),
            None if single and complete else NEEDS_A_COMPLETE_TRIAL,
        ),
        "intermediate_values": (lambda: vis.plot_intermediate_values(study), None),
        "parallel_coordinate": (
            lambda: vis.plot_parallel_coordinate(study, **target),
            None if single and complete else NEEDS_A_COMPLETE_TRIAL,
        ),
        # Optuna raises below two completed trials: there is nothing to compare.
        "param_importances": (
            lambda: vis.plot_param_importances(study, **target),
            None if single and complete >= 2 else NEEDS_TWO_COMPLETE_TRIALS,
        ),
        "slice": (
            lambda: vis.plot_slice(study, **target),
            None if single and complete else NEEDS_A_COMPLETE_TRIAL,
        ),
    }
    figures: dict[str, Any] = {}
    missing: dict[str, str] = {}
    for name in names:
        make, why_not = makers[name]
        if why_not is not None:
            missing[name] = why_not
            continue
        try:
            figures[name] = make()
        except Exception as err:  # e.g. importances when no parameter varies: keep the others
            logger.warning("Optuna plot %s failed for study %s: %s", name, study.study_name, err)
            missing[name] = f"Not available for this study yet: {err}"
    return StudyPlots(figures=figures, missing=missing)
