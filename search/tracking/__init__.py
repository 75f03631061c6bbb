"""Weights & Biases tracking: one W&B run per trial, one per study, offline when there is no key.

config      the mode (online, offline, disabled), the login check, the `wandb sync` command
start       starting a W&B run of our own (falls back to offline when online init fails)
trial_run   TrialRun: one trial's metrics, final state and summary
study_run   log_study_run: the study's one run (trials table, Optuna plots, final scores)
report      build_report: the study's W&B Report on the server (online only)

wandb and optuna are imported only by the functions that use them, so importing this package
is cheap and a disabled tracking never imports wandb.
"""

from search.tracking.config import (
    MODES,
    TrackingConfig,
    TrackingError,
    api_key_configured,
    resolve_mode,
    sync_command,
)
from search.tracking.report import build_report, report_command, report_spec
from search.tracking.study_run import (
    STUDY_ATTRS,
    STUDY_RUN_ATTR,
    confusion_chart,
    log_study_run,
    study_attr_figures,
    study_run_id,
    trials_table,
)
from search.tracking.trial_run import (
    BEST_METRIC,
    EPOCH_METRIC,
    STATE_KEY,
    STEP_METRIC,
    TRIAL_STATES,
    VAL_TOP1,
    TrialRun,
)

__all__ = [
    "BEST_METRIC",
    "EPOCH_METRIC",
    "MODES",
    "STATE_KEY",
    "STEP_METRIC",
    "STUDY_ATTRS",
    "STUDY_RUN_ATTR",
    "TRIAL_STATES",
    "VAL_TOP1",
    "TrackingConfig",
    "TrackingError",
    "TrialRun",
    "api_key_configured",
    "build_report",
    "confusion_chart",
    "log_study_run",
    "report_command",
    "report_spec",
    "resolve_mode",
    "study_attr_figures",
    "study_run_id",
    "sync_command",
    "trials_table",
]
