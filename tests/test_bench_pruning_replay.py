"""bench/pruning_replay.py: saved curves read back as trained, and replays that repeat."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from bench.pruning_replay import (
    Curve,
    cut_by_patience,
    false_prunes,
    load_curves,
    main,
    oracle_share,
    replay,
    save_curves,
)
from search.definition import PrunerSpec
from search.study import make_pruner

ARGS = {"trials": 3, "epochs": 4, "classes": 5, "clips": 8, "frames": 20, "dim": 8, "seed": 0}


def _curves() -> list[Curve]:
    rng = np.random.default_rng(0)
    curves = []
    for i in range(3):
        correct = [rng.random(40) < 0.2 * (e + i) / 4 for e in range(1, 5)]
        loss = [rng.random(40).astype(np.float32) for _ in range(4)]
        curves.append(
            Curve(
                {"cell": "gru", "lr": 1e-3 * (i + 1), "batch_size": 16},
                [float(c.mean()) for c in correct],
                correct,
                loss,
                mean_loss=[float(x.mean()) for x in loss],
                steps_per_epoch=10 + i,
            )
        )
    # A trial that diverged in its first epoch: no outcomes at all.
    curves.append(Curve({"cell": "lstm"}, [], [], [], steps_per_epoch=7, diverged=True))
    return curves


def test_saved_curves_read_back_as_they_were_and_other_arguments_are_refused(tmp_path):
    path, curves = tmp_path / "c.npz", _curves()
    save_curves(path, curves, 5, argparse.Namespace(**ARGS))
    back, classes = load_curves(path, argparse.Namespace(**ARGS))
    assert classes == 5 and len(back) == len(curves)
    for mine, theirs in zip(curves, back, strict=True):
        assert (mine.params, mine.top1, mine.mean_loss) == (
            theirs.params,
            theirs.top1,
            theirs.mean_loss,
        )
        assert (mine.steps_per_epoch, mine.diverged) == (theirs.steps_per_epoch, theirs.diverged)
        for a, b in zip(mine.correct + mine.loss, theirs.correct + theirs.loss, strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b)
    with pytest.raises(SystemExit, match="curves were trained with"):
        load_curves(path, argparse.Namespace(**{**ARGS, "epochs": 5}))


def test_hyperband_replays_the_same_brackets_every_time():
    curves = _curves()[:3] * 4  # 12 trials: enough for brackets to differ by study name
    spec = PrunerSpec(kind="hyperband", startup_trials=0, warmup_epochs=0)
    ends = [replay(curves, make_pruner(spec, True, 4), 5) for _ in range(3)]
    assert ends[0] == ends[1] == ends[2]


def _flat(final: float, epochs: int) -> Curve:
    correct = [np.arange(10) < round(10 * final)] * epochs
    return Curve({}, [final] * epochs, correct, [np.zeros(10, np.float32)] * epochs)


def test_the_oracle_prunes_the_lower_half_at_the_epoch_and_spares_the_upper_half():
    # Finals 0.1 .. 0.9 over 10 epochs, and two 30-epoch trials at 0.8 and 0.9: the median of
    # the 11 finals is 0.6. The startup trial (0.1) completes.
    curves = [_flat(f / 10, 10) for f in range(1, 10)] + [_flat(0.8, 30), _flat(0.9, 30)]
    share, pruned, false = oracle_share(curves, startup=1, epoch=2)
    # pruned: 0.2 .. 0.6 (5 trials, 2 epochs each); the rest run their whole curves.
    assert (pruned, false) == (5, 0)
    assert share == pytest.approx((10 + 5 * 2 + 3 * 10 + 2 * 30) / (9 * 10 + 2 * 30))
    # Under 20 % false: one of the two 30-epoch upper-half trials may go too (1 of 6 < 20 %).
    share, pruned, false = oracle_share(curves, startup=1, epoch=2, false_rate=0.2)
    assert (pruned, false) == (6, 1)
    assert share == pytest.approx((10 + 6 * 2 + 3 * 10 + 30) / (9 * 10 + 2 * 30))


def test_false_prunes_are_counted_against_all_finals_and_against_the_completed_ones():
    finals = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.9]  # median of all: 0.45
    # Pruned (positive ends): 0.3, 0.5, 0.6; trial 1 diverged; the rest completed.
    ends = [-10, -1, 3, -10, 2, 4, -10, -10]
    diverged = [False, True, False, False, False, False, False, False]
    # Completed: 0.1, 0.4, 0.7, 0.9 (median 0.55): 0.6 is above it, 0.5 only above 0.45.
    assert false_prunes(finals, ends, diverged) == (2, 1, pytest.approx(0.55))


def test_each_loss_gain_gets_its_own_patience_table_and_the_cost_of_its_cut(tmp_path, capsys):
    path = tmp_path / "c.npz"
    save_curves(path, _curves(), 5, argparse.Namespace(**ARGS))
    flags = [f"--{k}={v}" for k, v in ARGS.items()]
    main([*flags, "--patience=1", "--min-loss-gain", "0", "100", "--curves", str(path)])
    out = capsys.readouterr().out
    assert "# patience off: 12 epochs" in out
    tables = [line for line in out.splitlines() if line.startswith("# patience 1, min loss gain")]
    assert [t.split(":")[0] for t in tables] == [
        "# patience 1, min loss gain 0",
        "# patience 1, min loss gain 100",
    ]
    # A 100-nat margin leaves top-1 alone: each curve stops 1 epoch after its first
    # epoch without a new high, so none runs all 4 epochs.
    cut = [cut_by_patience(c, 1, 100.0) for c in _curves()]
    assert all(len(c.top1) < 4 for c in cut[:3])
    costs = [line for line in out.splitlines() if line.startswith("# patience stopped")]
    assert len(costs) == 2
    assert costs[1].endswith(f"{sum(len(c.top1) for c in cut)} of 12 epochs")
