"""bench/search_quality.py at --quick size: every arm runs and its figures are sane."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.search_quality import definition_for
from search.definition import load_definition

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_search_quality_bench_prints_and_writes_sane_figures_for_every_arm(tmp_path):
    done, work = _quick_bench(tmp_path)
    figures = json.loads((work / "search_quality.json").read_text())
    arms = {a["arm"]: a for a in figures["arms"]}
    assert set(arms) == {"hand", "default", "median"}
    for name, arm in arms.items():
        assert 0.0 <= arm["test_top1_refit"] <= 1.0
        assert arm["wall_s"] >= 0
        assert 0 < arm["epochs_spent"] <= arm["epochs_no_prune_estimate"]
        assert f"{name:<8} {arm['test_top1_refit']:>18.4f}" in done.stdout
    for name in ("default", "median"):
        arm = arms[name]
        assert arm["trials"] == figures["trials"] == 4
        assert 0 <= arm["pruned"] <= arm["trials"]
        assert arm["audited"] <= min(arm["pruned"], figures["audit_sample"])
        if arm["audited"]:
            low, high = arm["false_prune_interval95"]
            assert 0.0 <= low <= arm["false_prune_rate"] <= high <= 1.0
        else:
            assert arm["false_prune_rate"] is None
        assert math.isfinite(arm["test_top1_search_model"])


@pytest.mark.slow
def test_quick_bench_with_two_workers_shares_one_trial_budget_between_two_processes(tmp_path):
    _, work = _quick_bench(tmp_path, "--arms", "default", "--workers", "2")
    (arm,) = json.loads((work / "search_quality.json").read_text())["arms"]
    assert arm["trials"] == 4  # 4 in all across the two processes, not 4 each
    logs = [work / "default" / "study.log", work / "default" / "study-1.log"]
    assert all("study 'sq_default'" in log.read_text() for log in logs)  # both processes opened it
    audit = json.loads((work / "default" / "audit.json").read_text())
    assert audit["jobs"] == 2


def _quick_bench(tmp_path: Path, *flags: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Run bench/search_quality.py --quick on the CPU; return its finished process and work dir."""
    work = tmp_path / "work"
    command = [sys.executable, str(REPO / "bench" / "search_quality.py"), "--quick", *flags]
    where = ["--data-dir", str(tmp_path / "data"), "--work-dir", str(work), "--device", "cpu"]
    done = subprocess.run([*command, *where], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done, work


def test_bench_refuses_fewer_than_one_worker_before_any_work(tmp_path):
    bench = [sys.executable, str(REPO / "bench" / "search_quality.py")]
    done = subprocess.run(
        [*bench, "--data-dir", str(tmp_path), "--workers", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "--workers 0: give at least 1" in done.stderr
    assert not any(tmp_path.iterdir())  # no data written


def test_set_changes_the_study_arms_definition_and_refuses_unknown_keys(tmp_path):
    path = definition_for(
        "default", False, tmp_path, ("pruner.startup_trials=3", "pruner.alpha=0.01")
    )

    pruner = yaml.safe_load(path.read_text())["pruner"]
    assert (pruner["startup_trials"], pruner["alpha"], pruner["kind"]) == (3, 0.01, "paired")
    assert load_definition(path).pruner.startup_trials == 3
    with pytest.raises(SystemExit, match=r"pruner\.patience is not a key"):
        definition_for("default", False, tmp_path, ("pruner.patience=3",))
