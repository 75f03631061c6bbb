"""Storages without the guarantees the worker loop needs: refused, or warned about once."""

from __future__ import annotations

import logging

import pytest

from search.errors import StudyError
from search.storage import open_storage


@pytest.mark.parametrize(
    "url",
    ["mysql://root:s3cret@db.example/optuna", "mysql+pymysql://root:s3cret@db.example/optuna"],
)
def test_mysql_urls_are_refused_without_showing_the_password(url):
    with pytest.raises(StudyError, match=r"MySQL is not supported.*postgresql://") as info:
        open_storage(url)
    assert "s3cret" not in str(info.value) and "db.example" in str(info.value)


def test_a_heartbeat_given_with_a_journal_storage_is_warned_about_once(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="search.storage"):
        open_storage(f"journal:///{tmp_path / 'study.log'}", heartbeat_interval=1)
    warned = [r for r in caplog.records if "no heartbeats" in r.getMessage()]
    assert len(warned) == 1 and "study.log" in warned[0].getMessage()


def test_a_journal_storage_without_a_heartbeat_flag_is_not_warned_about(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="search.storage"):
        open_storage(f"journal:///{tmp_path / 'study.log'}")
    assert not caplog.records


def test_a_database_storage_beats_every_interval_with_a_grace_of_three(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat_interval=2)
    assert (storage.heartbeat_interval, storage.grace_period) == (2, 6)
    default = open_storage(f"sqlite:///{tmp_path / 'other.db'}")
    assert (default.heartbeat_interval, default.grace_period) == (10, 30)
