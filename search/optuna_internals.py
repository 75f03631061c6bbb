"""Every use of Optuna's private API in search/, in one place, checked by a test on upgrade.

Optuna sends heartbeats and finds stale trials only inside `Study.optimize`, which cannot hold a
budget shared by many workers; our loop (search/runner.py) does both itself, so it needs these.
Attaching files to another worker's or a finished trial (search/artifacts.py) needs the study's
storage and a trial's storage id, which Study and FrozenTrial do not expose publicly.
tests/test_optuna_internals.py fails loudly when an Optuna release removes or renames any of them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import optuna
from optuna.storages._heartbeat import (
    BaseHeartbeatThread,
    get_heartbeat_thread,
    is_heartbeat_enabled,
)
from optuna.storages._rdb import models as rdb_models
from optuna.trial import TrialState


def heartbeat_enabled(study: optuna.Study) -> bool:
    """Return whether the study's storage records heartbeats (RDB storages with an interval)."""
    return is_heartbeat_enabled(study._storage)


def heartbeat(study: optuna.Study, trial: optuna.Trial) -> BaseHeartbeatThread:
    """Return a context manager beating for `trial` while it runs (no-op without heartbeats)."""
    return get_heartbeat_thread(trial._trial_id, study._storage)


def rdb_storage(study: optuna.Study) -> optuna.storages.RDBStorage | None:
    """Return the study's RDB storage under Optuna's cache wrapper, or None for other kinds."""
    storage = getattr(study._storage, "_backend", study._storage)  # _CachedStorage wraps it
    return storage if isinstance(storage, optuna.storages.RDBStorage) else None


def grace_period_s(study: optuna.Study) -> float:
    """Return how long a running trial may stay silent before it counts as dead."""
    storage = rdb_storage(study)
    return float(storage.grace_period or 2 * storage.heartbeat_interval)


def stale_trial_ids(study: optuna.Study) -> list[int]:
    """Return the ids of RUNNING trials silent past the grace period, never-beaten ones included.

    Optuna only looks at trials with a heartbeat row; a worker killed between `ask` and its
    first beat leaves a RUNNING trial without one, which would wait for a retry forever. Such a
    trial counts as stale once its start is older than the grace period.
    """
    storage = rdb_storage(study)
    if storage is None or not is_heartbeat_enabled(storage):
        return []
    stale = set(storage._get_stale_trial_ids(study._study_id))
    # Optuna 5 stores datetime_start as the client's clock in naive UTC.
    now_utc = datetime.now(UTC).replace(tzinfo=None)
    cutoff = now_utc - timedelta(seconds=grace_period_s(study))
    model, beat = rdb_models.TrialModel, rdb_models.TrialHeartbeatModel
    with storage.scoped_session() as session:
        silent = (
            session.query(model.trial_id)
            .filter(model.study_id == study._study_id, model.state == TrialState.RUNNING)
            .filter(model._datetime_start_utc < cutoff)
            .filter(~session.query(beat).filter(beat.trial_id == model.trial_id).exists())
            .all()
        )
        session.commit()
    stale.update(trial_id for (trial_id,) in silent)
    return sorted(stale)


def frozen_trial(study: optuna.Study, trial_id: int) -> optuna.trial.FrozenTrial:
    """Return a trial by its storage id (Study has no public lookup by id)."""
    return study._storage.get_trial(trial_id)


def set_user_attr(study: optuna.Study, trial_id: int, key: str, value: object) -> None:
    """Set a user attr on an unfinished trial by its storage id (it may be another worker's)."""
    study._storage.set_trial_user_attr(trial_id, key, value)


def fail_running_trial(study: optuna.Study, trial_id: int) -> optuna.trial.FrozenTrial | None:
    """Mark a RUNNING trial FAIL; return it, or None when it had already finished."""
    storage = study._storage
    try:
        if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            return None
    except optuna.exceptions.UpdateFinishedTrialError:
        return None
    return storage.get_trial(trial_id)


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """Return a trial's storage id (its number counts within the study only)."""
    return trial._trial_id


def trial_id_by_number(study: optuna.Study, number: int) -> int:
    """Return the storage id of the study's trial `number`; KeyError when there is none."""
    return study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)


def storage(study: optuna.Study) -> optuna.storages.BaseStorage:
    """Return the study's storage, which Optuna's artifact functions need for a FrozenTrial."""
    return study._storage
