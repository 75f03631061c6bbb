"""Weights & Biases tracking: one W&B run per trial, one per study, offline when there is no key."""

from __future__ import annotations

import json
import logging
import netrc
import os
import re
import shlex
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

if TYPE_CHECKING:  # wandb and optuna cost seconds to import; only functions that use them do
    import optuna
    import wandb
    from wandb_workspaces.reports import v2 as wr

logger = logging.getLogger(__name__)

MODES = ("online", "offline", "disabled")
TRIAL_STATES = ("complete", "pruned", "failed")
STEP_METRIC = "train/step"  # x axis of log_step metrics
EPOCH_METRIC = "epoch"  # x axis of log_epoch metrics: the step trial.report uses
STATE_KEY = "trial_state"  # summary key; W&B's own run "state" is finished/crashed/failed
# Keys the study is expected to log (the report's panels refer to them).
BEST_METRIC = "best_val_top1"
VAL_TOP1 = "val/top1"

# Study user attrs (JSON dicts) the study run carries: scalars to its summary, rows to tables.
STUDY_ATTRS = ("final", "audit", "protocol")
# Study user attr holding the study run's W&B id, so every later write updates that one run.
STUDY_RUN_ATTR = "wandb_study_run"
_SHORT_LIST = 16  # a list of numbers up to this long stays one summary value (e.g. an interval)

# W&B hosts whose key `wandb login` writes to ~/.netrc (api.wandb.ai; wandb 0.31's default URL).
_DEFAULT_HOSTS = ("api.wandb.ai", "api.forge.coreweave.com")


class TrackingError(RuntimeError):
    """W&B tracking cannot do what was asked; the message says why and what to do instead."""


@dataclass(frozen=True)
class TrackingConfig:
    """Where and how runs are tracked; `mode` comes from `resolve_mode`."""

    mode: str  # 'online' | 'offline' | 'disabled'
    project: str
    group: str  # the study name
    dir: str  # wandb/ is created under it
    entity: str | None = None
    init_timeout_s: float = 30.0  # online init gives up after this and falls back to offline
    finish_timeout_s: float = 120.0  # online finish stops uploading after this; `wandb sync` later

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"W&B mode {self.mode!r} is not one of {', '.join(MODES)}")


def api_key_configured() -> bool:
    """Return whether a W&B API key is set (env var or a netrc entry); never touches the network."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    path = _netrc_path()
    if not path.is_file():
        return False
    try:
        entries = netrc.netrc(str(path))
    except (netrc.NetrcParseError, OSError) as err:
        logger.warning("cannot read %s (%s); treating W&B as not logged in", path, err)
        return False
    base_url = os.environ.get("WANDB_BASE_URL")
    hosts = [urlsplit(base_url).netloc] if base_url else list(_DEFAULT_HOSTS)
    return any((creds := entries.authenticators(h)) and creds[2] for h in hosts)


def _netrc_path() -> Path:
    """Return the netrc file wandb itself would read."""
    if env := os.environ.get("NETRC"):
        return Path(env).expanduser()
    home = Path("~/.netrc").expanduser()
    windows = Path("~/_netrc").expanduser()
    return windows if not home.exists() and windows.exists() else home


def resolve_mode(requested: str | None) -> str:
    """Return the W&B mode: the requested one, else WANDB_MODE, else online iff a key is set."""
    if requested is None:
        env = os.environ.get("WANDB_MODE", "").strip().lower()
        if env in MODES:
            return env
        return "online" if api_key_configured() else "offline"
    mode = requested.strip().lower()
    if mode not in MODES:
        raise ValueError(f"W&B mode {requested!r} is not one of {', '.join(MODES)}")
    return mode


def _settings(cfg: TrackingConfig) -> wandb.Settings:
    import wandb

    return wandb.Settings(
        init_timeout=cfg.init_timeout_s,
        finish_timeout=cfg.finish_timeout_s,
        # Console capture patches the process-wide stdout: with trials in threads every run
        # would record every trial's output, so it is off.
        console="off",
        quiet=True,
        save_code=False,
        login_timeout=cfg.init_timeout_s,
    )


def _init_run(cfg: TrackingConfig, *, job_type: str, name: str, config: Mapping[str, Any],
              run_id: str | None = None):
    """Start a W&B run of its own (never the global wandb.run); None when tracking is disabled.

    With run_id the run is resumed when it exists (online) or its offline records carry that
    id, so `wandb sync` appends them to the one run.
    """
    if cfg.mode == "disabled":
        return None
    import wandb

    root = Path(cfg.dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = dict(
        project=cfg.project,
        entity=cfg.entity,
        group=cfg.group,
        job_type=job_type,
        name=name,
        config=dict(config),
        dir=str(root),
        # create_new: several trials in threads each get their own run, and wandb.run is
        # left alone, so nothing logs to another trial's run by accident.
        reinit="create_new",
        settings=_settings(cfg),
    )
    if run_id is not None:
        kwargs.update(id=run_id, resume="allow")
    if cfg.mode == "online":
        if not api_key_configured():
            logger.warning(
                "W&B mode is online but no API key is set (WANDB_API_KEY or `wandb login`); "
                "logging %s offline under %s",
                name,
                root / "wandb",
            )
        else:
            try:
                return wandb.init(mode="online", **kwargs)
            except Exception as err:  # any failure to reach W&B: keep the data locally instead
                logger.warning(
                    "W&B online init of %s failed (%s); logging offline under %s, upload later "
                    "with `wandb sync`",
                    name,
                    str(err).splitlines()[0] if str(err) else type(err).__name__,
                    root / "wandb",
                )
    try:
        return wandb.init(mode="offline", **kwargs)
    except Exception as err:
        raise TrackingError(
            f"cannot start an offline W&B run in {root / 'wandb'}: {err}; "
            "check that the folder is writable, or turn tracking off with mode 'disabled'"
        ) from err


def _run_path(run) -> str | None:
    """Return 'entity/project/run_id' for an online run, the local run folder for an offline one."""
    if run is None:
        return None
    if run.settings._offline:
        return str(run.settings.sync_dir)
    return run.path


class TrialRun:
    """One W&B run for one Optuna trial; each instance logs only to its own run (thread-safe)."""

    def __init__(self, cfg: TrackingConfig, trial_number: int, config: Mapping[str, Any]):
        self.cfg = cfg
        self.trial_number = trial_number
        self._run = _init_run(cfg, job_type="trial", name=f"trial-{trial_number}", config=config)
        self.path: str | None = _run_path(self._run)
        self._lock = threading.Lock()
        self._finished = self._run is None
        self._axis: dict[str, str] = {}  # metric -> its step metric, defined on first use
        self._warned: set[tuple[str, str]] = set()
        if self._run is not None:
            logger.info("trial %d tracked in W&B run %s", trial_number, self.path)

    @property
    def finished(self) -> bool:
        """Return whether the run has been closed (always True when tracking is disabled)."""
        return self._finished

    def log_step(self, metrics: Mapping[str, float], step: int) -> None:
        """Log training-step metrics (e.g. 'train/loss', 'train/top1', 'train/examples_per_s')."""
        self._log(metrics, STEP_METRIC, step)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Log per-epoch metrics (e.g. 'val/loss', 'val/top1', 'val/top5') at x = epoch."""
        self._log(metrics, EPOCH_METRIC, epoch)

    def _log(self, metrics: Mapping[str, float], axis: str, value: int) -> None:
        if self._run is None:
            return
        with self._lock:
            if self._finished:
                logger.warning("W&B run of trial %d is finished; dropped %s", self.trial_number,
                               sorted(metrics))
                return
            for key in metrics:
                if key in (STEP_METRIC, EPOCH_METRIC):  # an axis logged as a value, e.g. epoch
                    continue
                # Each metric gets its own x axis: W&B's global _step counts log calls and
                # would interleave steps and epochs.
                if key not in self._axis:
                    self._axis[key] = axis
                    self._run.define_metric(key, step_metric=axis)
                elif self._axis[key] != axis and (key, axis) not in self._warned:
                    self._warned.add((key, axis))
                    logger.warning(
                        "metric %r is logged against both %r and %r; W&B plots it against %r. "
                        "Give the %r one its own name", key, self._axis[key], axis,
                        self._axis[key], axis)
            self._run.log({**metrics, axis: value})

    def finish(self, state: str, summary: Mapping[str, Any] | None = None) -> None:
        """Write the trial's final state and summary, then close the run; later calls do nothing."""
        if state not in TRIAL_STATES:
            raise ValueError(f"trial state {state!r} is not one of {', '.join(TRIAL_STATES)}")
        with self._lock:
            if self._finished:
                return
            self._finished = True
            run = self._run
            try:
                run.summary.update({**(summary or {}), STATE_KEY: state})
            finally:
                run.finish(exit_code=1 if state == "failed" else 0)
        logger.info("trial %d W&B run closed as %s", self.trial_number, state)

    def __enter__(self) -> TrialRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._finished:
            return
        state, summary = "failed", {"fail_reason": "run closed without a final state"}
        if exc_type is not None:
            summary = {"fail_reason": f"{exc_type.__name__}: {exc}".rstrip(": ")}
            if _is_trial_pruned(exc):
                state, summary = "pruned", {"prune_reason": str(exc)}
        try:
            self.finish(state, summary)
        except Exception:  # never hide the exception that is already on its way out
            logger.exception("closing the W&B run of trial %d failed", self.trial_number)
            if exc_type is None:
                raise


def _is_trial_pruned(exc: BaseException | None) -> bool:
    import optuna

    return isinstance(exc, optuna.TrialPruned)


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
    """Return a W&B table with one row per trial: state, value, params, duration, W&B run."""
    import wandb

    trials = study.get_trials(deepcopy=False)
    param_names = sorted({name for t in trials for name in t.params})
    columns = ["number", "state", "value", *param_names, "duration_s", "wandb_run", "user_attrs"]
    rows = []
    for t in trials:
        duration = t.duration.total_seconds() if t.duration is not None else None
        rows.append([
            t.number,
            t.state.name.lower(),
            _trial_value(study, t),
            *(_json_scalar(t.params.get(name)) for name in param_names),
            duration,
            t.user_attrs.get("wandb_run"),
            json.dumps(t.user_attrs, default=str, sort_keys=True),
        ])
    # Columns mix None with numbers (running/failed trials, params absent from a branch).
    return wandb.Table(columns=columns, data=rows, allow_mixed_types=True)


def study_figures(study: optuna.Study) -> dict[str, Any]:
    """Return Optuna's plotly figures for the study by name; a figure that fails is left out."""
    import optuna
    import optuna.visualization as vis

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    makers = {
        "optimization_history": vis.plot_optimization_history,
        "intermediate_values": vis.plot_intermediate_values,
        "parallel_coordinate": vis.plot_parallel_coordinate,
    }
    # Importances need two finished trials to compare; fewer raises inside optuna.
    if len(complete) >= 2:
        makers["param_importances"] = vis.plot_param_importances
    figures = {}
    for name, make in makers.items():
        try:
            figures[name] = make(study)
        except Exception as err:  # one plot that cannot be drawn must not lose the others
            logger.warning("Optuna plot %s failed for study %s: %s", name, study.study_name, err)
    return figures


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
    data = [[names[i], names[j], int(counts[i, j])]
            for i in range(len(names)) for j in range(len(names))]
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
    run = _init_run(cfg, job_type="study", name=f"study-{study.study_name}", config=config,
                    run_id=study_run_id(study))
    path = _run_path(run)
    exit_code = 1
    try:
        payload: dict[str, Any] = {"study/trials": trials_table(study)}
        for name, fig in study_figures(study).items():
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
            summary.update(best_trial=best.number, best_value=best.value,
                           best_params=dict(best.params),
                           best_wandb_run=best.user_attrs.get("wandb_run"))
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


def sync_command(cfg: TrackingConfig) -> str | None:
    """Return the `wandb sync ...` command that uploads this config's offline runs, else None."""
    if cfg.mode == "disabled":
        return None
    root = Path(cfg.dir).resolve() / "wandb"
    # Online trials that fell back to offline also leave offline-run-* folders to upload.
    if cfg.mode == "online" and not any(root.glob("offline-run-*")):
        return None
    return f"wandb sync {shlex.quote(str(root))}/offline-run-*"


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

    runs = wr.Runset(entity=entity, project=project, name=f"trials of {study_name}",
                     filters=f"Group = {json.dumps(study_name)} and JobType = 'trial'")
    columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(p)) for p in params]
    columns.append(wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(metric)))
    panels = [
        wr.ParallelCoordinatesPlot(columns=columns, title=f"{', '.join(params)} vs {metric}",
                                   layout=wr.Layout(x=0, y=0, w=24, h=10)),
        wr.ParameterImportancePlot(with_respect_to=metric, layout=wr.Layout(x=0, y=10, w=12, h=8)),
        wr.LinePlot(title="validation top-1 per epoch", x=EPOCH_METRIC, y=[VAL_TOP1],
                    layout=wr.Layout(x=12, y=10, w=12, h=8)),
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

