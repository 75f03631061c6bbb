"""The study's one W&B run: the trials table, Optuna's plots, the best confusion matrix and the
study's results (final scores, pruning audit, UCF-101 protocol)."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from search.clip_outcomes import is_outcome_key
from search.study_plots import study_plots
from search.tracking.config import TrackingConfig
from search.tracking.start import run_path, start_run

if TYPE_CHECKING:  # wandb and optuna cost seconds to import; only functions that use them do
    import optuna
    import wandb

logger = logging.getLogger(__name__)

# Study user attrs (JSON dicts) the study run carries: scalars to its summary, rows to tables.
STUDY_ATTRS = ("final", "audit", "protocol")
# Study user attr holding the study run's W&B id, so every later write updates that one run.
STUDY_RUN_ATTR = "wandb_study_run"
_SHORT_LIST = 16  # a list of numbers up to this long stays one summary value (e.g. an interval)
# The Optuna plots the study run carries (search/study_plots.py builds them).
STUDY_PLOTS = (
    "optimization_history",
    "intermediate_values",
    "parallel_coordinate",
    "param_importances",
)


def _trial_value(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> Any:
    if trial.values is None:
        return None
    return trial.values[0] if len(study.directions) == 1 else json.dumps(trial.values)


def _json_scalar(value: Any) -> Any:
    """Return value as a type a W&B table column accepts (lists/dicts become JSON text)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return json.dumps(value, default=str)


def trials_table(study: optuna.Study) -> wandb.Table:
    """Return a W&B table with one row per trial: state, value, params, duration, W&B run.

    Its user_attrs column leaves out per-clip outcomes (`val_clips/<epoch>`): bulky, and read
    only by the paired pruner.
    """
    import wandb

    trials = study.get_trials(deepcopy=False)
    param_names = sorted({name for t in trials for name in t.params})
    columns = ["number", "state", "value", *param_names, "duration_s", "wandb_run", "user_attrs"]
    rows = []
    for t in trials:
        duration = t.duration.total_seconds() if t.duration is not None else None
        rows.append(
            [
                t.number,
                t.state.name.lower(),
                _trial_value(study, t),
                *(_json_scalar(t.params.get(name)) for name in param_names),
                duration,
                t.user_attrs.get("wandb_run"),
                json.dumps(_table_attrs(t.user_attrs), default=str, sort_keys=True),
            ]
        )
    # Columns mix None with numbers (running/failed trials, params absent from a branch).
    return wandb.Table(columns=columns, data=rows, allow_mixed_types=True)


def _table_attrs(user_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Return a trial's user attrs without its per-clip outcomes (~1 MB a UCF-101 trial)."""
    return {k: v for k, v in user_attrs.items() if not is_outcome_key(k)}


def confusion_chart(confusion: np.ndarray, class_names: Sequence[str]):
    """Return W&B's interactive confusion-matrix chart built from a count matrix (row = true)."""
    import wandb

    counts = np.asarray(confusion)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {counts.shape}")
    names = list(class_names)
    if counts.shape[0] == len(names) + 1:  # class ids 1..N with 0 = background (padding)
        names = ["background", *names]
        if not counts[0].any() and not counts[:, 0].any():
            counts, names = counts[1:, 1:], names[1:]
    if counts.shape[0] != len(names):
        raise ValueError(
            f"confusion matrix has {counts.shape[0]} classes but {len(class_names)} names given"
        )
    # Same table and chart as wandb.plot.confusion_matrix, which only takes per-example labels;
    # we already hold the counts, so the cells go in directly.
    data = [
        [names[i], names[j], int(counts[i, j])]
        for i in range(len(names))
        for j in range(len(names))
    ]
    table = wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=data)
    return wandb.plot_table(
        vega_spec_name="wandb/confusion_matrix/v1",
        data_table=table,
        fields={"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
        string_fields={"title": "Best trial: confusion matrix"},
    )


def study_run_id(study: optuna.Study) -> str:
    """Return the W&B id of the study's one study run, made and stored in the study once.

    Stored rather than derived from the name alone: two studies of one name in different
    storages must not write into each other's run.
    """
    known = (study.user_attrs.get(STUDY_RUN_ATTR) or {}).get("id")
    if known:
        return known
    slug = re.sub(r"[^a-z0-9_-]+", "-", study.study_name.lower()).strip("-")[:40] or "study"
    run_id = f"study-{slug}-{uuid.uuid4().hex[:8]}"
    study.set_user_attr(STUDY_RUN_ATTR, {"id": run_id})
    return run_id


def study_attr_figures(name: str, value: Any) -> tuple[dict[str, Any], dict[str, list[dict]]]:
    """Return a study attr's scalar figures by summary key and its per-row lists by table key.

    Nested dicts become `name/a/b` keys; a list of dicts is a table's rows; a list of numbers
    longer than a few entries (per-class accuracies) a table of index and value; a short one
    stays a summary value; lists of lists (confusion matrices) have their own chart and are
    left out.
    """
    summary: dict[str, Any] = {}
    tables: dict[str, list[dict]] = {}

    def walk(key: str, v: Any) -> None:
        if isinstance(v, Mapping):
            for k, item in v.items():
                walk(f"{key}/{k}", item)
        elif isinstance(v, (list, tuple)):
            if v and all(isinstance(item, Mapping) for item in v):
                tables[key] = [dict(item) for item in v]
            elif all(item is None or isinstance(item, (bool, int, float, str)) for item in v):
                if len(v) <= _SHORT_LIST:
                    summary[key] = list(v)
                else:
                    leaf = key.rsplit("/", 1)[-1]
                    tables[key] = [{"index": i, leaf: item} for i, item in enumerate(v)]
        elif v is None or isinstance(v, (bool, int, float, str, np.generic)):
            summary[key] = _json_scalar(v)

    walk(name, value)
    return summary, tables


def _rows_table(rows: list[dict]) -> wandb.Table:
    import wandb

    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    data = [[_json_scalar(row.get(c)) for c in columns] for row in rows]
    return wandb.Table(columns=columns, data=data, allow_mixed_types=True)


def log_study_run(
    cfg: TrackingConfig,
    study: optuna.Study,
    best_confusion: np.ndarray | None,
    class_names: Sequence[str],
) -> str | None:
    """Write or update the study's one W&B study run; return its path.

    It holds the trials table, Optuna's plots, the best confusion matrix and the study attrs
    `final`, `audit` and `protocol` (scalars in the summary, per-row lists as tables). Every
    call writes to the same run id (`study_run_id`), so a later call updates the run.
    """
    if cfg.mode == "disabled":
        return None
    import wandb

    trials = study.get_trials(deepcopy=False)
    by_state: dict[str, int] = {}
    for t in trials:
        by_state[t.state.name.lower()] = by_state.get(t.state.name.lower(), 0) + 1
    config = {
        "study_name": study.study_name,
        "directions": [d.name.lower() for d in study.directions],
        "sampler": type(study.sampler).__name__,
        "pruner": type(getattr(study, "pruner", None)).__name__,
    }
    run = start_run(
        cfg,
        job_type="study",
        name=f"study-{study.study_name}",
        config=config,
        run_id=study_run_id(study),
    )
    path = run_path(run)
    exit_code = 1
    try:
        payload: dict[str, Any] = {"study/trials": trials_table(study)}
        for name, fig in study_plots(study, STUDY_PLOTS).figures.items():
            payload[f"study/{name}"] = wandb.Plotly(fig)
        if best_confusion is not None:
            payload["study/best_confusion_matrix"] = confusion_chart(best_confusion, class_names)
        summary: dict[str, Any] = {f"n_{state}": n for state, n in by_state.items()}
        summary["n_trials"] = len(trials)
        try:
            best = study.best_trial
        except ValueError:  # no complete trial yet (or a multi-objective study)
            best = None
        if best is not None:
            summary.update(
                best_trial=best.number,
                best_value=best.value,
                best_params=dict(best.params),
                best_wandb_run=best.user_attrs.get("wandb_run"),
            )
        for attr in STUDY_ATTRS:
            value = study.user_attrs.get(attr)
            if not isinstance(value, Mapping):
                continue
            figures, tables = study_attr_figures(attr, value)
            summary.update(figures)
            payload.update({key: _rows_table(rows) for key, rows in tables.items()})
        run.log(payload)
        run.summary.update(summary)
        exit_code = 0
    finally:
        run.finish(exit_code=exit_code)
    logger.info("study %s logged to W&B run %s", study.study_name, path)
    return path
