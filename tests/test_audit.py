"""The pruning audit: Wilson interval maths and re-runs of a real tiny study's pruned trials."""

from __future__ import annotations

import itertools
import json
import types

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from study_fixtures import study_args, write_tiny_data

import run_study
from search.audit import rerun_all, wilson_interval
from search.errors import StudyError


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [  # by hand: (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), z = 1.95996
        (3, 10, 0.10779, 0.60322),
        (0, 10, 0.0, 0.27753),
        (10, 10, 0.72247, 1.0),
        (1, 2, 0.09453, 0.90547),
    ],
)
def test_wilson_interval_matches_hand_computed_values(successes, n, low, high):
    got = wilson_interval(successes, n)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_of_no_trials_is_uninformative():
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, one_torch_thread):
    """A real 3-trial tiny study, then two pruned trials added by hand: one the pruner stopped
    (the best complete trial's params and seed, so its re-run must reproduce that value) and
    one that diverged (which the audit must leave out)."""
    root = tmp_path_factory.mktemp("audit")
    data = write_tiny_data(root)
    args = study_args(root, data, "--trials", "3", "--no-prune")
    assert run_study.main(args) == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{root / 'study.db'}")
    best = study.best_trial
    dists = best.distributions
    for reason in (
        {"epoch": 1, "value": 0.01, "median": 0.3, "n_trials": 3},
        {"epoch": 1, "text": "loss became nan at epoch 1 step 2"},
    ):
        study.add_trial(
            create_trial(
                state=TrialState.PRUNED,
                params=best.params,
                distributions=dists,
                intermediate_values={1: 0.01},
                user_attrs={"manifest": best.user_attrs["manifest"], "prune_reason": reason},
            )
        )
    return root, data, study, args


def test_audit_reruns_pruned_trial_to_its_full_budget_without_adding_trials(finished, capsys):
    root, _, study, args = finished
    before = len(study.get_trials(deepcopy=False))
    pruned_number = before - 2
    assert run_study.main(["audit", "--sample", "5", *_flags(args)]) == 0
    out = capsys.readouterr().out
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{root / 'study.db'}")
    assert len(study.get_trials(deepcopy=False)) == before  # re-runs are not trials
    record = study.user_attrs["audit"]
    assert record == json.loads((root / "runs" / "tiny" / "audit.json").read_text())
    values = sorted(t.value for t in study.trials if t.state == TrialState.COMPLETE)
    assert record["median"] == values[1] and record["best"] == values[2]
    # The diverged trial is not a pruner's decision: only the other one is audited.
    assert record["pruned"] == 1 and record["audited"] == 1
    (rerun,) = record["reruns"]
    assert rerun["trial_number"] == pruned_number
    assert rerun["pruned_epoch"] == 1 and rerun["value_when_pruned"] == 0.01
    assert rerun["pruned_by"] == "median"  # a reason without "kind" predates the paired pruner
    # Same params, same seed, same rule: the re-run reproduces the best trial on the CPU.
    assert rerun["final_value"] == pytest.approx(study.best_value, abs=1e-9)
    assert rerun["epochs"] == study.best_trial.user_attrs["epochs_run"]
    beat = study.best_value > values[1]
    assert rerun["beat_median"] is beat and rerun["beat_best"] is False
    assert record["beat_median"] == int(beat)
    assert record["false_prune_rate"] == float(beat)
    assert record["interval95"] == pytest.approx(list(wilson_interval(int(beat), 1)))
    assert "false-prune rate" in out and f"{pruned_number:>5}" in out


def test_audit_epochs_flag_sets_the_rerun_budget(finished):
    _, _, study, args = finished
    assert run_study.main(["audit", "--epochs", "1", *_flags(args)]) == 0
    (rerun,) = study.user_attrs["audit"]["reruns"]
    assert rerun["epochs"] == 1


def test_audit_reruns_at_the_budget_the_study_recorded(finished):
    _, _, study, args = finished
    assert study.user_attrs["epochs_budget"] == 3  # the tiny definition's max_epochs
    study.set_user_attr("epochs_budget", 1)  # as a study run with --epochs 1 records it
    try:
        assert run_study.main(["audit", *_flags(args)]) == 0
    finally:
        study.set_user_attr("epochs_budget", 3)
    (rerun,) = study.user_attrs["audit"]["reruns"]
    assert rerun["epochs"] == 1


def test_audit_of_a_study_without_completed_trials_is_a_user_error(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="tiny", storage=storage, direction="maximize")
    data = write_tiny_data(tmp_path)
    args = study_args(tmp_path, data)
    assert run_study.main(["audit", *_flags(args)]) == 2
    assert "no completed trial" in capsys.readouterr().err


def test_parallel_reruns_retrace_the_same_curves_as_one_at_a_time(tmp_path, one_torch_thread):
    data = write_tiny_data(tmp_path)
    args = study_args(tmp_path, data, "--trials", "3", "--no-prune")
    assert run_study.main(args) == 0
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.load_study(study_name="tiny", storage=storage)
    sources = sorted(study.trials, key=lambda t: t.value)[:2]  # two configurations, two seeds
    for source in sources:
        study.add_trial(
            create_trial(
                state=TrialState.PRUNED,
                params=source.params,
                distributions=source.distributions,
                intermediate_values={1: 0.0},
                user_attrs={
                    "manifest": source.user_attrs["manifest"],
                    "prune_reason": {"kind": "paired", "epoch": 1},
                },
            )
        )
    records = {}
    for jobs in ("1", "2"):
        assert run_study.main(["audit", "--jobs", jobs, *_flags(args)]) == 0
        records[jobs] = optuna.load_study(study_name="tiny", storage=storage).user_attrs["audit"]
    assert records["2"]["jobs"] == 2 and records["2"]["audited"] == 2
    pairs = zip(records["1"]["reruns"], records["2"]["reruns"], sources, strict=True)
    for one, two, source in pairs:
        # Each forked re-run is its seed's run alone: the same curve as in the parent, and
        # the same final value as the trial whose params and seed it carries.
        assert two["trial_number"] == one["trial_number"]
        assert two["curve"] == one["curve"] and two["epochs"] == one["epochs"]
        assert two["final_value"] == pytest.approx(source.value, abs=1e-9)
    assert records["2"]["beat_median"] == records["1"]["beat_median"]


def test_parallel_reruns_refuse_a_gpu_study():
    on_gpu = types.SimpleNamespace(device="cuda")
    with pytest.raises(StudyError, match="--jobs 1 there"):
        rerun_all([object(), object()], on_gpu, jobs=2)


def _flags(study_flags: list[str]) -> list[str]:
    """Keep the flags audit/evaluate share with a study run (not --trials, --no-prune, ...)."""
    keep = {"--study", "--study-name", "--storage", "--data", "--out-dir", "--device"}
    out = []
    for flag, value in itertools.pairwise(study_flags):
        if flag in keep:
            out += [flag, value]
    return out


@pytest.mark.slow
def test_audit_reruns_a_trial_the_real_pruner_stopped_along_its_own_curve(tmp_path, capsys):
    data = write_tiny_data(tmp_path)
    args = study_args(tmp_path, data, "--trials", "3", "--no-prune")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert run_study.main(args) == 0  # three complete trials to compare with
    study = optuna.load_study(study_name="tiny", storage=storage)
    study.enqueue_trial({"cell": "gru", "layers": 1, "hidden": 8, "lr": 1e-9, "clip_norm": 1.0})
    assert run_study.main(study_args(tmp_path, data, "--trials", "4")) == 0
    dull = optuna.load_study(study_name="tiny", storage=storage).trials[3]
    assert dull.state == TrialState.PRUNED  # by the tiny definition's median pruner
    assert run_study.main(["audit", "--sample", "3", *_flags(args)]) == 0
    record = optuna.load_study(study_name="tiny", storage=storage).user_attrs["audit"]
    (rerun,) = record["reruns"]
    assert (
        rerun["trial_number"] == 3
        and rerun["pruned_epoch"] == dull.user_attrs["prune_reason"]["epoch"]
    )
    # Its own params and seed: the re-run retraces the pruned trial's curve exactly, then goes on.
    seen = [dull.intermediate_values[e] for e in sorted(dull.intermediate_values)]
    assert rerun["curve"][: len(seen)] == pytest.approx(seen, abs=1e-6)
    assert rerun["epochs"] > len(seen)
    # An lr of 1e-9 learns nothing: pruning it was right, and the interval says how sure.
    assert rerun["beat_median"] is False and record["false_prune_rate"] == 0.0
    assert record["interval95"] == pytest.approx([0.0, 0.79347], abs=5e-5)


def test_audit_printout_survives_a_rerun_that_diverged_without_a_recorded_value():
    record = {
        "audited": 1,
        "pruned": 1,
        "complete": 3,
        "median": 0.5,
        "best": 0.7,
        "reruns": [
            {
                "trial_number": 4,
                "pruned_epoch": None,
                "value_when_pruned": None,
                "final_value": None,
                "epochs": 2,
                "beat_median": False,
                "beat_best": False,
            }
        ],
        "false_prune_rate": 0.0,
        "beat_median": 0,
        "beat_best": 0,
        "interval95": [0.0, 0.7935],
        "wall_s": 3.0,
    }
    text = run_study._audit_text(record, "audit.json")
    assert "      4        ?           ?     diverged       2       no     no" in text
    assert "false-prune rate 0.000 (0/1 beat the median; 95% Wilson interval 0.000-0.793)" in text
