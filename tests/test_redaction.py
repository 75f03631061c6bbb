"""A storage URL's password never reaches the screen, the logs, W&B or any file the study writes."""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from study_fixtures import study_args, write_tiny_data
from wandb_offline import offline_runs

import run_study
from search.storage import redact_url

SECRET = "s3cret-Pw-7731"
PG = "postgres:{pw}@127.0.0.1:5432/test"


def _postgres_up() -> bool:
    try:
        url = f"postgresql://{PG.format(pw=SECRET)}"
        with sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3}).connect():
            return True
    except Exception:
        return False


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            f"postgresql://u:{SECRET}@db.example:5432/optuna?sslmode=require",
            "postgresql://u:***@db.example:5432/optuna?sslmode=require",
        ),
        (
            f"postgresql://u@db.example/optuna?password={SECRET}",
            "postgresql://u:***@db.example/optuna",
        ),
        (f"mysql+pymysql://root:{SECRET}@h/db", "mysql+pymysql://root:***@h/db"),
        (f"root:{SECRET}@h/db", "root:***@h/db"),  # not a URL at all: still masked
        ("sqlite:///studies/x.db", "sqlite:///studies/x.db"),
        ("journal:///studies/x.log", "journal:///studies/x.log"),
    ],
)
def test_redact_url_hides_the_password_wherever_the_url_carries_it(url, shown):
    assert redact_url(url) == shown


def test_dashboard_command_leaves_the_password_out_and_says_where_it_goes():
    for url in (
        f"postgresql://u:{SECRET}@h:5432/db",
        f"postgresql://u@h:5432/db?password={SECRET}",
    ):
        command = run_study._dashboard_command(url, Path("out"))
        assert SECRET not in command and "***" not in command
        assert command.startswith("optuna-dashboard postgresql://u@h:5432/db ")
        assert "PGPASSWORD" in command
    plain = run_study._dashboard_command("postgresql://u@h/db", Path("out"))
    assert plain == "optuna-dashboard postgresql://u@h/db --artifact-dir out/artifacts"


needs_postgres = pytest.mark.skipif(
    not _postgres_up(), reason="PostgreSQL is not up on 127.0.0.1:5432"
)


@pytest.mark.postgres
@needs_postgres
def test_a_study_that_is_not_there_is_reported_without_the_password(capsys):
    assert (
        run_study.main(
            [
                "report",
                "--study-name",
                "absent",
                "--storage",
                f"postgresql://{PG.format(pw=SECRET)}",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "absent" in err and SECRET not in err and "***" in err


@pytest.mark.postgres
@pytest.mark.slow
@needs_postgres
def test_a_study_on_postgres_with_a_password_never_shows_it(tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    name = f"redact-{uuid.uuid4().hex[:8]}"
    url = f"postgresql://{PG.format(pw=SECRET)}"  # trust auth here: any password connects
    args = study_args(tmp_path, write_tiny_data(tmp_path), "--trials", "2", name=name)
    args[args.index("--storage") + 1] = url
    args[args.index("--wandb-mode") + 1] = "offline"
    try:
        assert run_study.main(args) == 0
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=url)
    out, err = capsys.readouterr()
    assert "in postgresql://postgres:***@127.0.0.1:5432/test" in out
    assert "storage: postgresql://postgres:***@127.0.0.1:5432/test" in out
    assert "optuna-dashboard postgresql://postgres@127.0.0.1:5432/test " in out
    assert SECRET not in out + err
    assert SECRET not in caplog.text
    runs = offline_runs(tmp_path / "runs" / name)
    assert {r.job_type for r in runs} == {"trial", "study"}
    for run in runs:
        assert SECRET not in json.dumps([run.config, run.summary, run.history], default=str)
    for path in tmp_path.rglob("*"):  # run files, tables, report, final.json, checkpoints
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
