"""Where and how W&B runs are tracked: the mode (online, offline, disabled), the login check."""

from __future__ import annotations

import logging
import netrc
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from datasets.errors import UserError

logger = logging.getLogger(__name__)

MODES = ("online", "offline", "disabled")

# W&B hosts whose key `wandb login` writes to ~/.netrc (api.wandb.ai; wandb 0.31's default URL).
_DEFAULT_HOSTS = ("api.wandb.ai", "api.forge.coreweave.com")


class TrackingError(UserError):
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


def sync_command(cfg: TrackingConfig) -> str | None:
    """Return the `wandb sync ...` command that uploads this config's offline runs, else None."""
    if cfg.mode == "disabled":
        return None
    root = Path(cfg.dir).resolve() / "wandb"
    # Online trials that fell back to offline also leave offline-run-* folders to upload.
    if cfg.mode == "online" and not any(root.glob("offline-run-*")):
        return None
    return f"wandb sync {shlex.quote(str(root))}/offline-run-*"
