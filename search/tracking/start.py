"""Starting a W&B run of our own: online when logged in, else offline, never the global run."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.tracking.config import TrackingConfig, TrackingError, api_key_configured

if TYPE_CHECKING:  # wandb costs seconds to import; only functions that use it do
    import wandb

logger = logging.getLogger(__name__)


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


def start_run(
    cfg: TrackingConfig,
    *,
    job_type: str,
    name: str,
    config: Mapping[str, Any],
    run_id: str | None = None,
) -> wandb.Run | None:
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


def run_path(run: wandb.Run | None) -> str | None:
    """Return 'entity/project/run_id' for an online run, the local run folder for an offline one."""
    if run is None:
        return None
    if run.offline:
        return str(run.settings.sync_dir)
    return run.path
