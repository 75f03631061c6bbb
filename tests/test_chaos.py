"""A short chaos soak on the real PostgreSQL: workers killed and replaced, nothing lost."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import sqlalchemy

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import chaos  # noqa: E402


def _postgres_up() -> bool:
    try:
        with sqlalchemy.create_engine(chaos.PG_URL, connect_args={"connect_timeout": 3}).connect():
            return True
    except Exception:
        return False


@pytest.mark.skipif(not _postgres_up(), reason="PostgreSQL is not up on 127.0.0.1:5432")
@pytest.mark.postgres
@pytest.mark.slow
def test_killed_and_interrupted_workers_lose_no_trial(tmp_path, capsys):
    code = chaos.main(
        [
            "--workers",
            "3",
            "--trials",
            "6",
            "--faults",
            "3",
            "--epochs",
            "10",
            "--gap",
            "4",
            "--seed",
            "1",
            "--timeout",
            "240",
            "--keep",
            str(tmp_path),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "3 faults" in printed and "ok   logical trials == budget: 6 logical" in printed
    assert not [line for line in printed.splitlines() if line.startswith("FAIL")], printed
