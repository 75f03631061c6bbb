"""Errors say whose fault they are: the user's (UserError: one line, exit 2) or ours (traceback)."""

from pathlib import Path

import pytest

from datasets import cache
from datasets.errors import DataError, UserError
from datasets.synthetic import write_synthetic
from models import train_cli
from models.checkpoint import CheckpointError
from search.errors import StudyError


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """2 classes x 25 clips (one per group), 4 frames of 4-d features."""
    out = tmp_path_factory.mktemp("data")
    write_synthetic(out, clips_per_class=25, frames=4, dim=4, classes=2, seed=0, workers=1)
    return str(out / "*")


@pytest.mark.parametrize("error", [DataError, StudyError, CheckpointError])
def test_user_errors_share_one_base_class_that_is_not_a_value_error(error: type):
    assert issubclass(error, UserError)
    assert not issubclass(error, ValueError)
    assert not issubclass(UserError, ValueError)


def test_a_value_error_from_a_bug_in_the_train_cli_is_a_traceback_not_exit_2(
    shards: str, tmp_path: Path, monkeypatch
):

    def bug(features, where):
        raise ValueError("an internal bug, not the user's input")

    monkeypatch.setattr(cache, "_to_fp16", bug)
    with pytest.raises(ValueError, match="an internal bug"):
        train_cli.main(
            ["--data", shards, "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
        )


def test_a_bad_flag_value_checked_by_a_config_class_is_still_a_user_error(
    shards: str, tmp_path: Path, capsys
):
    rc = train_cli.main(
        [
            "--data",
            shards,
            "--cache-dir",
            str(tmp_path / "cache"),
            "--device",
            "cpu",
            "--dropout",
            "1.5",
        ]
    )
    assert rc == 2
    assert capsys.readouterr().err.strip() == "error: ModelSpec.dropout must be in [0, 1), got 1.5"
