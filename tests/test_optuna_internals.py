"""Fails loudly when an Optuna upgrade removes or changes the private API search/ relies on."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from search import optuna_internals


@pytest.fixture
def study(tmp_path) -> optuna.Study:
    storage = RDBStorage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=1, grace_period=1)
    return optuna.create_study(study_name="s", storage=storage)


def _wait(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "never reached"
        time.sleep(0.1)


def test_the_private_names_we_use_still_exist():
    from optuna.storages._cached_storage import _CachedStorage
    from optuna.storages._rdb import models

    assert hasattr(models.TrialModel, "_datetime_start_utc")
    assert hasattr(models.TrialHeartbeatModel, "trial_id")
    assert hasattr(RDBStorage, "_get_stale_trial_ids")
    assert "_backend" in _CachedStorage.__init__.__code__.co_names


def test_the_study_unwraps_to_its_rdb_storage_with_heartbeats(study):
    assert isinstance(optuna_internals.rdb_storage(study), RDBStorage)
    assert optuna_internals.heartbeat_enabled(study)
    assert optuna_internals.grace_period_s(study) == 1.0


def test_a_beating_trial_is_stale_only_after_its_beats_stop(study):
    trial = study.ask()
    with optuna_internals.heartbeat(study, trial):
        _wait(lambda: trial._trial_id in _beaten(study))
        assert optuna_internals.stale_trial_ids(study) == []
    _wait(lambda: optuna_internals.stale_trial_ids(study) == [trial._trial_id])


def test_a_never_beaten_trial_is_stale_after_the_grace_period(study):
    trial = study.ask()
    assert optuna_internals.stale_trial_ids(study) == []
    _wait(lambda: optuna_internals.stale_trial_ids(study) == [trial._trial_id])
    failed = optuna_internals.fail_running_trial(study, trial._trial_id)
    assert failed is not None and failed.state == TrialState.FAIL
    assert optuna_internals.fail_running_trial(study, trial._trial_id) is None
    assert optuna_internals.stale_trial_ids(study) == []


def _beaten(study: optuna.Study) -> set[int]:
    from optuna.storages._rdb import models

    with optuna_internals.rdb_storage(study).scoped_session() as session:
        return {row.trial_id for row in session.query(models.TrialHeartbeatModel).all()}


def test_a_trial_is_found_by_its_number_and_its_storage_id(study):
    study.ask()  # trial 0, so numbers and ids could differ in another study of the storage
    other = optuna.create_study(study_name="other", storage=optuna_internals.storage(study))
    other.ask()
    trial = other.ask()
    trial_id = optuna_internals.trial_id_by_number(other, 1)
    assert trial_id == optuna_internals.trial_id(trial) != 1
    frozen = optuna_internals.frozen_trial(other, trial_id)
    assert frozen.number == 1 and optuna_internals.trial_id(frozen) == trial_id
    with pytest.raises(KeyError):
        optuna_internals.trial_id_by_number(other, 7)


def test_the_study_storage_takes_artifacts_of_a_running_trial(study, tmp_path):
    from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact

    trial = study.ask()
    frozen = optuna_internals.frozen_trial(study, optuna_internals.trial_id(trial))
    (tmp_path / "a.txt").write_text("a")
    store = FileSystemArtifactStore(tmp_path)
    storage = optuna_internals.storage(study)
    upload_artifact(
        artifact_store=store,
        file_path=str(tmp_path / "a.txt"),
        study_or_trial=frozen,
        storage=storage,
    )
    assert [m.filename for m in get_all_artifact_meta(frozen, storage=storage)] == ["a.txt"]
