"""`python -m models.train_cli` and `python -m models.evaluate` end to end on tiny synthetic
data."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from datasets.synthetic import write_synthetic
from models import evaluate as evaluate_cli
from models import train_cli
from models.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """4 classes x 25 clips (one per group), 16 frames of 8-d features."""
    out = tmp_path_factory.mktemp("data")
    write_synthetic(out, clips_per_class=25, frames=16, dim=8, classes=4, seed=0, workers=1)
    return out


def test_train_writes_a_checkpoint_that_evaluate_reads(shards, tmp_path, capsys):
    ckpt = tmp_path / "run" / "gru.pt"
    cache = tmp_path / "cache"
    rc = train_cli.main(
        [
            "--data",
            str(shards / "*"),
            "--cache-dir",
            str(cache),
            "--cell",
            "gru",
            "--layers",
            "1",
            "--hidden",
            "16",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--lr",
            "1e-2",
            "--device",
            "cpu",
            "--out",
            str(ckpt),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "train 56, val 16, test 28" in out  # split 1: groups 1-7 test, 4 groups validation
    assert "val:  top-1 " in out and "test: top-1 " in out
    _, spec, extra = load_checkpoint(ckpt)
    assert (spec.kind, spec.cell, spec.layers, spec.hidden, spec.input_dim) == (
        "rnn",
        "gru",
        1,
        16,
        8,
    )
    assert extra["data"]["split"] == 1 and len(extra["epochs"]) == 2

    rc = evaluate_cli.main(
        [str(ckpt), "--cache-dir", str(cache), "--part", "test", "--device", "cpu", "--worst", "2"]
    )
    out = capsys.readouterr().out
    assert rc == 0
    test_line = next(line for line in out.splitlines() if line.startswith("test: 28 clips"))
    top1 = float(test_line.split("top-1 ")[1].split()[0])
    assert top1 == pytest.approx(extra["scores"]["test"]["top1"], abs=1e-4)
    assert len(out.split("worst 2 classes:")[1].strip().splitlines()) == 2


def test_missing_data_is_one_error_line_that_says_how_to_get_demo_data(tmp_path, capsys):
    rc = train_cli.main(["--data", str(tmp_path / "nothing" / "*"), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1
    assert err[0].startswith("error: no TFRecord files match")
    assert "python -m datasets.synthetic --out data/ucf101" in err[0]
    assert not (tmp_path / "m").exists()


def test_bad_flag_value_is_one_error_line(shards, tmp_path, capsys):
    rc = train_cli.main(
        ["--data", str(shards / "*"), "--cache-dir", str(tmp_path), "--layers", "0"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == ["error: ModelSpec.layers must be >= 1, got 0"]


def test_evaluate_of_a_missing_checkpoint_is_one_error_line(tmp_path, capsys):
    rc = evaluate_cli.main([str(tmp_path / "none.pt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: checkpoint ")


def test_every_flag_has_help_showing_its_default():
    result = subprocess.run(
        [sys.executable, "-m", "models.train_cli", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    # one block per option: argparse starts each at a line indented by two spaces
    blocks = {
        b.split()[0]: " ".join(b.split())
        for b in re.split(r"\n  (?=-)", result.stdout)
        if b.startswith("-")
    }
    for flag, default in [
        ("--data", "data/ucf101/*"),
        ("--cell", "gru"),
        ("--layers", "2"),
        ("--hidden", "256"),
        ("--dropout", "0.0"),
        ("--lr", "0.001"),
        ("--clip-norm", "1.0"),
        ("--weight-decay", "0.0"),
        ("--batch-size", "256"),
        ("--epochs", "10"),
        ("--stride", "1"),
        ("--model", "rnn"),
        ("--split", "1"),
        ("--device", "auto"),
        ("--seed", "0"),
        ("--cache-dir", "data/cache"),
        ("--frame-level", "False"),
        ("--out", "checkpoints/model.pt"),
    ]:
        assert f"(default: {default})" in blocks[flag], blocks.get(flag)
    assert "(autocast on: True)" in blocks["--no-amp"]
    assert all("(default: " in b for f, b in blocks.items() if f not in ("-h,", "--no-amp"))
