"""The study's W&B Report (online only): parallel coordinates, importances, learning curves."""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING

from search.tracking.config import TrackingConfig, TrackingError, api_key_configured, sync_command
from search.tracking.trial_run import BEST_METRIC, EPOCH_METRIC, VAL_TOP1

if TYPE_CHECKING:  # wandb_workspaces costs seconds to import; only functions that use it do
    from wandb_workspaces.reports import v2 as wr

logger = logging.getLogger(__name__)


def report_command(study_name: str) -> str:
    """Return the command that builds the W&B report of a study once its runs are online."""
    return f"python run_study.py --study-name {shlex.quote(study_name)} --wandb-report --trials 0"


def report_spec(
    entity: str,
    project: str,
    study_name: str,
    params: Sequence[str],
    metric: str = BEST_METRIC,
) -> wr.Report:
    """Return (unsaved) a W&B report: parallel coordinates, importances and curves of a study."""
    from wandb_workspaces.reports import v2 as wr

    runs = wr.Runset(
        entity=entity,
        project=project,
        name=f"trials of {study_name}",
        filters=f"Group = {json.dumps(study_name)} and JobType = 'trial'",
    )
    columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(p)) for p in params]
    columns.append(wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(metric)))
    panels = [
        wr.ParallelCoordinatesPlot(
            columns=columns,
            title=f"{', '.join(params)} vs {metric}",
            layout=wr.Layout(x=0, y=0, w=24, h=10),
        ),
        wr.ParameterImportancePlot(with_respect_to=metric, layout=wr.Layout(x=0, y=10, w=12, h=8)),
        wr.LinePlot(
            title="validation top-1 per epoch",
            x=EPOCH_METRIC,
            y=[VAL_TOP1],
            layout=wr.Layout(x=12, y=10, w=12, h=8),
        ),
        wr.RunComparer(diff_only="split", layout=wr.Layout(x=0, y=18, w=24, h=10)),
    ]
    return wr.Report(
        entity=entity,
        project=project,
        title=f"Hyperparameter search: {study_name}",
        description=f"Optuna study {study_name!r}: one run per trial (W&B group {study_name!r}).",
        blocks=[
            wr.H1(text=f"Study {study_name}"),
            wr.P(text=f"Searched: {', '.join(params)}. Target: {metric} (higher is better)."),
            wr.PanelGrid(runsets=[runs], panels=panels),
        ],
    )


def build_report(
    cfg: TrackingConfig, study_name: str, params: Sequence[str], metric: str = BEST_METRIC
) -> str:
    """Create the study's W&B report on the server and return its URL (online mode only)."""
    if cfg.mode != "online" or not api_key_configured():
        raise TrackingError(
            f"cannot build a W&B report in {cfg.mode} mode without a W&B login: reports live on "
            f"the W&B server. Log in (`wandb login`), upload the runs with "
            f"`{sync_command(cfg) or 'wandb sync <dir>/wandb/offline-run-*'}`, then run "
            f"`{report_command(study_name)}`"
        )
    import wandb

    entity = cfg.entity
    try:
        if entity is None:
            entity = wandb.Api(timeout=int(cfg.init_timeout_s)).default_entity
        report = report_spec(entity, cfg.project, study_name, params, metric)
        report.save()
    except Exception as err:
        raise TrackingError(
            f"W&B report for study {study_name!r} in {entity}/{cfg.project} failed: {err}; "
            f"check the network and login, then run `{report_command(study_name)}` again"
        ) from err
    logger.info("W&B report of study %s: %s", study_name, report.url)
    return report.url
