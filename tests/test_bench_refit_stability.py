"""bench/refit_stability.py: its k-epoch averages are the refit's own, computed from one run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import refit_stability
from search_quality import QUICK_HAND, QUICK_HAND_EPOCHS, ensure_data, trial_settings

from search.refit import refit_and_score

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_each_average_scores_what_a_refit_averaging_that_many_epochs_scores(tmp_path):
    pattern = ensure_data(tmp_path / "data", quick=True)
    settings = trial_settings(pattern, True, "cpu", tmp_path, "refit")
    epochs = QUICK_HAND_EPOCHS
    scores = refit_stability.refit_scores(QUICK_HAND, epochs, 1, settings, [1, 2, epochs])
    for k, score in scores.items():
        refit = refit_and_score(QUICK_HAND, settings, seed=1, epochs=epochs, average_last=k)
        assert refit.averaged == k and score == float(refit.test.top1)


def test_quick_run_prints_a_line_per_average(tmp_path, capsys):
    args = ["--quick", "--data-dir", str(tmp_path / "data"), "--average", "1", "3", "9"]
    assert refit_stability.main([*args, "--work-dir", str(tmp_path / "work")]) == 0
    lines = [ln.split() for ln in capsys.readouterr().out.splitlines() if ln.startswith("quick ")]
    # 9 is more epochs than the quick refit has: it averages all 3, the same as 3.
    assert [ln[1] for ln in lines] == ["1", "3"]
    for ln in lines:
        per_seed = [float(x) for x in ln[6:]]
        assert len(per_seed) == 2 and all(0.0 <= x <= 1.0 for x in per_seed)
