"""bench/rejudge.py: re-judging a study with its own rule repeats its prunes; other rules differ."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest

from bench.rejudge import Unpruned, figures, main, oracle, parse_rule, rejudge
from search.clip_outcomes import CLASSES_KEY, STEPS_KEY, outcome_attrs
from search.paired_pruner import PairedPruner

CLIPS, EPOCHS, CLASSES = 120, 6, 10
# Per-trial skill: top-1 climbs towards it; the low ones trail far behind the median.
SKILLS = [0.9, 0.8, 0.85, 0.1, 0.88, 0.12, 0.7, 0.08]


def _study(pruner: PairedPruner) -> optuna.Study:
    """Return a sequential in-memory study of SKILLS' curves, pruned live by pruner."""
    rng = np.random.default_rng(0)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for skill in SKILLS:
        trial = study.ask()
        trial.set_user_attr(CLASSES_KEY, CLASSES)
        trial.set_user_attr(STEPS_KEY, 10)
        pruned, best = False, 0.0
        for epoch in range(1, EPOCHS + 1):
            correct = rng.random(CLIPS) < skill * epoch / EPOCHS + 0.05
            loss = rng.random(CLIPS).astype(np.float32) + (~correct)
            for key, value in outcome_attrs(epoch, correct, loss).items():
                trial.set_user_attr(key, value)
            best = max(best, float(correct.mean()))
            trial.report(float(correct.mean()), epoch)
            if epoch < EPOCHS and trial.should_prune():
                pruned = True
                break
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, best)
    return study


def _pruner(alpha: float) -> PairedPruner:
    return PairedPruner(alpha=alpha, startup_trials=2, warmup_epochs=1)


def test_its_own_rule_repeats_the_live_prunes() -> None:
    study = _study(_pruner(0.01))
    trials = study.get_trials()
    live = {
        t.number: max(t.intermediate_values)
        for t in trials
        if t.state == optuna.trial.TrialState.PRUNED
    }
    assert live, "the curves must make the live pruner prune something"

    outcome = rejudge(trials, _pruner(0.01), "alpha=0.01")

    assert outcome.pruned == live
    assert outcome.kept_past_data == []
    assert sorted(outcome.completed) == sorted(set(range(len(SKILLS))) - set(live))


def test_a_stricter_rule_keeps_trials_past_their_data_and_counts_the_audit() -> None:
    study = _study(_pruner(0.01))
    trials = study.get_trials()
    pruned = [t.number for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    # The audit re-ran the first pruned trial only: 6 epochs, finishing above every trial.
    audit = {"reruns": [{"trial_number": pruned[0], "final_value": 0.99, "epochs": 6}]}

    unpruned = Unpruned.of(trials, audit)
    strict = figures(rejudge(trials, _pruner(1e-30), "alpha=1e-30"), unpruned)
    same = figures(rejudge(trials, _pruner(0.01), "alpha=0.01"), unpruned)

    assert strict["pruned"] == 0 and strict["kept_past_data"] == pruned
    assert strict["share"] == 1.0  # nothing pruned: the same epochs as without pruning
    assert strict["best_trials"] == [pruned[0]]  # the audit's 0.99 is the best final
    assert same["false"] == 1 and same["unknown"] == len(pruned) - 1
    assert not same["best_kept"]
    ran = sum(len(t.intermediate_values) for t in trials)
    # The unaudited pruned trials count the audited re-runs' mean epochs without pruning.
    extra = sum(6 - len(t.intermediate_values) for t in trials if t.number in pruned)
    assert same["epochs"] == ran and same["epochs_without_pruning"] == ran + extra
    # The oracle prunes a trial that ends above the median only where it may err.
    assert "(0 false)" in oracle(unpruned, 2, 1, 0.0)
    assert "(1 false)" in oracle(unpruned, 2, 1, 0.3)


def test_main_prints_and_writes_each_rule(tmp_path, capsys) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    live = _study(_pruner(0.01))
    copy = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    copy.add_trials(live.get_trials())

    assert (
        main(
            [
                "--storage",
                storage,
                "--study-name",
                "s",
                "--startup",
                "2",
                "--warmup",
                "1",
                "--rules",
                "alpha=0.01",
                "metric=loss,alpha=0.05",
                "--json",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )

    rows = json.loads((tmp_path / "r.json").read_text())
    assert [r["rule"] for r in rows] == ["alpha=0.01", "metric=loss,alpha=0.05"]
    assert rows[0]["pruned"] == sum(
        t.state == optuna.trial.TrialState.PRUNED for t in live.get_trials()
    )
    assert "| alpha=0.01 |" in capsys.readouterr().out


def test_parse_rule_reads_settings_and_refuses_others() -> None:
    assert parse_rule("metric=loss,alpha=0.05") == {"metric": "loss", "alpha": 0.05}
    with pytest.raises(SystemExit, match="expected key=value"):
        parse_rule("patience=3")
    assert parse_rule("alpha=0.01,best_so_far=true") == {"alpha": 0.01, "best_so_far": True}
    assert parse_rule("best_so_far=0") == {"best_so_far": False}
    with pytest.raises(SystemExit, match="best_so_far is one of"):
        parse_rule("best_so_far=on")


def test_failed_trials_count_on_neither_side_of_the_epochs() -> None:
    trials = _study(_pruner(0.01)).get_trials()
    failed = optuna.trial.create_trial(
        state=optuna.trial.TrialState.FAIL, intermediate_values={1: 0.1, 2: 0.1}
    )
    with_failed = Unpruned.of([*trials, failed], None)
    assert with_failed == Unpruned.of(trials, None)
