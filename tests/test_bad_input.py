"""Bad input stops run_study.py before any training: one error line, exit 2, storage untouched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from study_fixtures import study_args, write_definition, write_tiny_data

import run_study

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("good")
    write_tiny_data(root)
    return root / "data-8d"


def _fails_cleanly(capsys, args: list[str], *expected: str) -> str:
    assert run_study.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    for text in expected:
        assert text in err, err
    return err


def _no_study_written(root: Path) -> None:
    db = root / "study.db"
    if db.exists():
        assert optuna.get_all_study_names(storage=f"sqlite:///{db}") == []


def test_missing_data(tmp_path, capsys):
    _fails_cleanly(
        capsys,
        study_args(tmp_path, str(tmp_path / "none" / "*.tfrecord")),
        "no TFRecord files match",
        str(tmp_path / "none"),
    )
    _no_study_written(tmp_path)


def test_truncated_shard_names_file_and_record(tmp_path, shards, capsys):
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    victim = sorted(copy.glob("*.tfrecord*"))[0]
    victim.write_bytes(victim.read_bytes()[:-30])
    _fails_cleanly(capsys, study_args(tmp_path, str(copy / "*.tfrecord*")), victim.name, "record")
    _no_study_written(tmp_path)


def test_corrupt_byte_is_a_crc_error(tmp_path, shards, capsys):
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    victim = sorted(copy.glob("*.tfrecord*"))[1]
    raw = bytearray(victim.read_bytes())
    raw[200] ^= 0xFF
    victim.write_bytes(bytes(raw))
    err = _fails_cleanly(capsys, study_args(tmp_path, str(copy / "*.tfrecord*")), victim.name)
    assert "crc" in err.lower()
    _no_study_written(tmp_path)


def test_wrong_feature_size_for_an_existing_study(tmp_path, shards, capsys):
    assert run_study.main(study_args(tmp_path, str(shards / "*.tfrecord*"), "--trials", "0")) == 0
    capsys.readouterr()
    other = write_tiny_data(tmp_path, dim=6)
    _fails_cleanly(capsys, study_args(tmp_path, other, "--trials", "1"), "8-d", "6-d")
    assert _trials(tmp_path) == 0


def test_invalid_definition(tmp_path, shards, capsys):
    args = study_args(tmp_path, str(shards / "*.tfrecord*"))
    write_definition(tmp_path, train={"epochs": -1})
    _fails_cleanly(capsys, args, "tiny.yaml", "train.epochs")
    _no_study_written(tmp_path)


def test_unreachable_storage(tmp_path, shards, capsys):
    args = study_args(tmp_path, str(shards / "*.tfrecord*"))
    args[args.index("--storage") + 1] = "postgresql://nobody@127.0.0.1:1/none"
    _fails_cleanly(capsys, args, "cannot open storage", "127.0.0.1:1")


def test_storage_that_is_not_a_url(tmp_path, shards, capsys):
    args = study_args(tmp_path, str(shards / "*.tfrecord*"))
    args[args.index("--storage") + 1] = "mystudy"
    _fails_cleanly(capsys, args, "not a database URL")


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--trials", "-1"),
        ("--jobs", "0"),
        ("--epochs", "0"),
        ("--timeout", "0"),
        ("--wandb-mode", "loud"),
    ],
)
def test_flag_out_of_range(tmp_path, flag, value, capsys):
    with pytest.raises(SystemExit) as info:
        run_study.main(["--wandb-mode", "disabled", flag, value])
    assert info.value.code == 2
    assert flag in capsys.readouterr().err


def test_device_that_is_not_there(tmp_path, shards, capsys):
    args = study_args(tmp_path, str(shards / "*.tfrecord*"))
    args[args.index("--device") + 1] = "tpu"
    _fails_cleanly(capsys, args, "--device")


def _trials(root: Path) -> int:
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{root / 'study.db'}")
    return len(study.trials)


@pytest.mark.slow
def test_run_from_another_directory_finds_its_definition_and_keeps_its_files_together(tmp_path):
    # A copy of run_study.py with its studies/ stands for the checkout; the code is imported
    # from the real one, so nothing is written into the real repository.
    checkout, elsewhere = tmp_path / "checkout", tmp_path / "elsewhere"
    (checkout / "studies").mkdir(parents=True)
    elsewhere.mkdir()
    shutil.copy(REPO / "run_study.py", checkout)
    for definition in ("ucf101_rnn.yaml", "demo.yaml"):
        shutil.copy(REPO / "studies" / definition, checkout / "studies")
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    done = subprocess.run(
        [sys.executable, str(checkout / "run_study.py"), "--trials", "0", "--device", "cpu"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert list(elsewhere.iterdir()) == [], "files were written into the working directory"
    # No data: the embedded demo set, with the definition sized for it (studies/demo.yaml).
    assert f"sqlite:///{checkout / 'studies' / 'ucf101_rnn_demo.db'}" in done.stdout
    assert "embedded synthetic demo set" in done.stdout
    assert (checkout / "studies" / "ucf101_rnn_demo.db").is_file()
    assert (checkout / "studies" / "runs" / "ucf101_rnn_demo" / "report.html").is_file()
    assert any((checkout / "data" / "demo").glob("*/*.tfrecord*"))
    assert any((checkout / "data" / "cache").iterdir())


def test_the_demo_definition_is_taken_only_when_no_data_is_there(tmp_path, monkeypatch):
    import run_study

    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    for definition in ("ucf101_rnn.yaml", "demo.yaml"):
        shutil.copy(REPO / "studies" / definition, tmp_path / "studies")
    args = run_study.build_parser().parse_args([])
    definition, name, _ = run_study._definition_and_storage(args)
    assert (name, definition.train.max_epochs) == ("ucf101_rnn_demo", 15)
    (tmp_path / "data" / "ucf101").mkdir(parents=True)
    (tmp_path / "data" / "ucf101" / "shard-0.tfrecord").write_bytes(b"")
    definition, name, _ = run_study._definition_and_storage(args)
    assert (name, definition.train.max_epochs) == ("ucf101_rnn", 40)
    given = run_study.build_parser().parse_args(["--data", str(tmp_path / "x")])
    (tmp_path / "data" / "ucf101" / "shard-0.tfrecord").unlink()
    assert run_study._definition_and_storage(given)[1] == "ucf101_rnn"  # --data: never the demo
