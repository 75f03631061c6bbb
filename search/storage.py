"""Where a study lives: SQLite, PostgreSQL (many workers) or Optuna's journal file."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import random
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import (
    JournalStorage,
    RDBStorage,
    RetryHeartbeatStaleTrialCallback,
)
from optuna.storages.journal import JournalFileBackend

from search.errors import StudyError

log = logging.getLogger(__name__)
HEARTBEAT_INTERVAL_S = 10
# A trial silent for this many heartbeat intervals counts as dead.
GRACE_PERIODS_PER_BEAT = 3
# A trial whose worker died is retried with the same params at most this often.
MAX_RETRY = 2
SQLITE_BUSY_TIMEOUT_S = 60


def default_storage_url(study_name: str, studies_dir: str | Path = "studies") -> str:
    """Return the SQLite URL used when no --storage is given."""
    return f"sqlite:///{Path(studies_dir) / study_name}.db"


def journal_path(url: str) -> Path | None:
    """Return the journal file of a journal storage URL, else None."""
    if url.startswith("journal:///"):
        return Path(url[len("journal:///") :])
    if url.endswith((".log", ".jsonl")) and "://" not in url:
        return Path(url)
    return None


def open_storage(
    url: str,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
) -> optuna.storages.BaseStorage:
    """Return a connected storage; StudyError when the URL is wrong, unreachable or unsafe.

    `heartbeat_interval` None means the default; a journal storage has no heartbeat, so an
    interval given with one is warned about (a dead worker's trial there stays RUNNING).
    """
    journal = journal_path(url)
    if journal is not None:
        if heartbeat_interval is not None:
            log.warning(
                "storage %s is a journal file, which has no heartbeats: a killed worker's trial "
                "stays RUNNING and is not retried; use sqlite:/// or postgresql:// for that",
                url,
            )
        journal.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(journal)))
    if url.startswith("mysql"):
        # MySQL's GET_LOCK could hold the budget lock, but no MySQL server is tested here, and
        # an untested lock overshoots budgets silently: refuse rather than pretend.
        raise StudyError(
            f"storage {redact_url(url)}: MySQL is not supported (workers could not share the trial "
            "budget safely); use postgresql://user@host/db for many workers, or sqlite:///path.db"
        )
    if not url.startswith(("sqlite:", "postgresql:", "postgresql+")):
        raise StudyError(
            f"storage {redact_url(url)!r} is not a database URL; use sqlite:///path.db, "
            "postgresql://user@host/db or journal:///path.log"
        )
    if heartbeat_interval is None:
        heartbeat_interval = HEARTBEAT_INTERVAL_S
    if grace_period is None:
        grace_period = GRACE_PERIODS_PER_BEAT * heartbeat_interval
    engine_kwargs: dict = {}
    if url.startswith("sqlite:"):
        _sqlite_file(url).parent.mkdir(parents=True, exist_ok=True)
        # Several workers and a dashboard share one file: wait for the lock instead of failing.
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    else:
        # Many workers on one server: a small pool each, and drop connections the server closed.
        engine_kwargs.update(pool_size=2, max_overflow=4, pool_pre_ping=True, pool_recycle=1800)
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    storage = _connect_with_retries(url, engine_kwargs, heartbeat_interval, grace_period)
    if url.startswith("sqlite:"):
        # WAL lets the dashboard read while workers write, without "database is locked".
        with storage.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    return storage


def _connect_with_retries(
    url: str, engine_kwargs: dict, heartbeat_interval: int, grace_period: int, attempts: int = 5
) -> RDBStorage:
    # Workers starting together on a new database race to create Optuna's tables; the loser
    # gets an integrity error and simply tries again once the tables exist.
    for attempt in range(attempts):
        try:
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                    max_retry=MAX_RETRY
                ),
            )
        except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:
            if _lost_creation_race(exc) and attempt < attempts - 1:
                time.sleep(0.5 + random.random())
                continue
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StudyError(f"cannot open storage {redact_url(url)}: {reason}") from None
    raise AssertionError("unreachable")


def _lost_creation_race(exc: Exception) -> bool:
    """Whether another worker created the same table or row a moment before this one."""
    text = str(exc).lower()
    return isinstance(exc, sqlalchemy.exc.IntegrityError) or any(
        s in text for s in ("already exists", "duplicate key", "database is locked")
    )


@contextlib.contextmanager
def budget_lock(url: str, study_name: str) -> Iterator[None]:
    """Hold a lock shared by every worker of this study while it counts and asks for a trial."""
    with _THREAD_LOCK:
        if url.startswith("postgresql"):
            with _pg_advisory_lock(url, study_name):
                yield
            return
        lock_file = journal_path(url) or (_sqlite_file(url) if url.startswith("sqlite:") else None)
        if lock_file is None:
            yield
            return
        # Not "<file>.lock": Optuna's journal backend takes that name for its own lock.
        with open(f"{lock_file}.budget-lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


_THREAD_LOCK = threading.Lock()
_PG_ENGINES: dict[str, sqlalchemy.Engine] = {}


@contextlib.contextmanager
def _pg_advisory_lock(url: str, study_name: str) -> Iterator[None]:
    engine = _PG_ENGINES.get(url)
    if engine is None:
        engine = _PG_ENGINES[url] = sqlalchemy.create_engine(url, pool_size=1, pool_pre_ping=True)
    key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()


def _sqlite_file(url: str) -> Path:
    return Path(url.split(":///", 1)[1]) if ":///" in url else Path("optuna.db")


def redact_url(url: str) -> str:
    """Return the URL with its password (in the user part or a ?password= query) shown as ***."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:  # not a URL SQLAlchemy reads: mask any user:pw@ part
        return re.sub(r":[^:/@]*@", ":***@", url)
    query_password = parsed.query.get("password")
    if query_password:  # libpq also takes the password as a query parameter
        parsed = parsed.difference_update_query(["password"]).set(password=query_password)
    return parsed.render_as_string(hide_password=True)
