"""The noise-aware pruner: exact test maths, the outcomes codec, and when it does (not) prune."""

import math

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial

from search.clip_outcomes import (
    CLASSES_KEY,
    STEPS_KEY,
    decode_correct,
    decode_loss,
    encode_correct,
    encode_loss,
    is_outcome_key,
    outcome_attrs,
    read_correct,
    read_loss,
)
from search.definition import PrunerSpec
from search.paired_pruner import PairedPruner
from search.paired_tests import (
    binom_upper_tail,
    mcnemar_worse,
    paired_standard_error,
    wilcoxon_greater,
)
from search.pruning import explain_prune
from search.study import make_pruner

CLIPS, CLASSES, EPOCH = 200, 10, 3


def test_binomial_upper_tail_matches_hand_computed_values():
    assert binom_upper_tail(4, 5) == 6 / 32  # C(5,4) + C(5,5) over 2^5
    assert binom_upper_tail(0, 7) == 1.0 and binom_upper_tail(8, 7) == 0.0
    assert binom_upper_tail(2, 3, 1 / 3) == pytest.approx(7 / 27, rel=1e-12)  # 3*(1/9)(2/3) + 1/27
    # exact far in the tail, where a normal approximation would be off by orders of magnitude
    assert binom_upper_tail(60, 60) == 2.0**-60


def test_mcnemar_counts_discordant_clips_and_gives_the_exact_one_sided_p():
    reference = np.array([1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 0], bool)
    trial = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0], bool)
    b, c, p = mcnemar_worse(trial, reference)
    assert (b, c) == (6, 2)
    assert p == (28 + 8 + 1) / 256  # P(Binom(8, 1/2) >= 6)
    assert mcnemar_worse(reference, reference)[2] == 1.0  # no discordant clips: no evidence


def test_wilcoxon_signed_rank_matches_hand_computed_z_and_p():
    z, p, n = wilcoxon_greater(np.array([1.0, 2.0, 3.0, -4.0]))
    # W+ = 1 + 2 + 3 = 6, mean 4*5/4 = 5, var 4*5*9/24 = 7.5
    assert n == 4 and z == pytest.approx(0.5 / math.sqrt(7.5))
    assert p == pytest.approx(0.5 * math.erfc(0.5 / math.sqrt(7.5) / math.sqrt(2)))
    z, p, n = wilcoxon_greater(np.array([1.0, 1.0, -2.0, 3.0, 0.0]))
    # zero dropped; |1| tie ranks 1.5 each: W+ = 1.5 + 1.5 + 4 = 7; var 7.5 - (2^3 - 2)/48
    assert n == 4 and z == pytest.approx(1.5 / math.sqrt(7.375))
    assert wilcoxon_greater(np.zeros(5))[1] == 1.0
    assert paired_standard_error(np.array([1.0, -1.0, 1.0, -1.0])) == pytest.approx(
        math.sqrt(4 / 3) / 2
    )


def test_outcome_codec_round_trips_and_stays_small():
    rng = np.random.default_rng(0)
    correct = rng.random(1001) < 0.4
    loss = rng.gamma(2.0, 1.5, 1001).astype(np.float32)
    np.testing.assert_array_equal(decode_correct(encode_correct(correct)), correct)
    np.testing.assert_allclose(decode_loss(encode_loss(loss)), loss, rtol=1e-3)
    attrs = outcome_attrs(4, correct, loss)
    assert set(attrs) == {"val_clips/4"} and is_outcome_key("val_clips/4")
    assert not is_outcome_key("val_num_classes")
    np.testing.assert_array_equal(read_correct(attrs, 4), correct)
    np.testing.assert_array_equal(read_loss(attrs, 4), decode_loss(encode_loss(loss)))
    assert read_correct(attrs, 5) is None and read_loss({"val_clips/4": "junk"}, 4) is None
    size = sum(len(v) for v in attrs["val_clips/4"].values())
    assert size <= 4 / 3 * (1001 / 8 + 2 * 1001) + 16  # base64 of packed bits + float16


def _completed(
    correct: np.ndarray,
    loss: np.ndarray | None = None,
    epoch: int = EPOCH,
    number_of_classes: int | None = CLASSES,
) -> optuna.trial.FrozenTrial:
    loss = np.where(correct, 0.5, 3.0).astype(np.float32) if loss is None else loss
    attrs = outcome_attrs(epoch, correct, loss)
    if number_of_classes is not None:
        attrs[CLASSES_KEY] = number_of_classes
    return create_trial(
        state=TrialState.COMPLETE,
        value=float(correct.mean()),
        intermediate_values={epoch: float(correct.mean())},
        user_attrs=attrs,
    )


def _hits(count: int, offset: int = 0) -> np.ndarray:
    """CLIPS outcomes with `count` right, starting at clip `offset` (wrapping)."""
    correct = np.zeros(CLIPS, bool)
    correct[(offset + np.arange(count)) % CLIPS] = True
    return correct


def _study(pruner: optuna.pruners.BasePruner, references: list[np.ndarray]) -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for correct in references:
        study.add_trial(_completed(correct))
    return study


def _running(
    study: optuna.Study, correct: np.ndarray, loss: np.ndarray | None = None, epoch: int = EPOCH
) -> optuna.Trial:
    trial = study.ask()
    loss = np.where(correct, 0.5, 3.0).astype(np.float32) if loss is None else loss
    trial.set_user_attr(CLASSES_KEY, CLASSES)
    for key, value in outcome_attrs(epoch, correct, loss).items():
        trial.set_user_attr(key, value)
    trial.report(float(correct.mean()), epoch)
    return trial


def _pruner(**kw) -> PairedPruner:
    return PairedPruner(**{"startup_trials": 3, "warmup_epochs": 1, **kw})


# Five completed trials at 110..130 of 200 right (chance is 20): the median one has 120.
REFERENCES = [_hits(n, offset=3 * i) for i, n in enumerate([110, 115, 120, 125, 130])]


def test_clearly_worse_trial_is_pruned_with_the_gap_and_the_noise_it_beat():
    pruner = _pruner()
    study = _study(pruner, REFERENCES)
    trial = _running(study, _hits(60, offset=6))  # the median trial starts at clip 6 too
    assert trial.should_prune()
    reason = explain_prune(trial, EPOCH, 0.3)
    assert reason["reference_trial"] == 2 and reason["reference_value"] == 0.6
    assert (reason["b"], reason["c"]) == (60, 0)
    assert reason["p"] == 2.0**-60 and reason["alpha"] == 0.001
    assert reason["gap"] == pytest.approx(30.0)  # points of top-1
    diff = np.r_[np.ones(60), np.zeros(140)]
    assert reason["noise"] == pytest.approx(100 * diff.std(ddof=1) / math.sqrt(200))
    assert reason["value"] == 0.3 and reason["epoch"] == EPOCH and reason["clips"] == CLIPS
    assert "McNemar" in reason["text"] and "trial 2" in reason["text"]


def test_trial_one_clip_behind_the_median_is_not_pruned():
    study = _study(_pruner(), REFERENCES)
    trial = _running(study, _hits(119, offset=6))  # the median's clips but one
    assert not trial.should_prune()


def test_nothing_is_pruned_while_the_median_is_within_noise_of_chance():
    # The failure: medians near 1/num_classes; even a trial at 0 right is kept.
    near_chance = [_hits(n, offset=7 * i) for i, n in enumerate([18, 20, 22, 24, 26])]
    pruner = _pruner()
    study = _study(pruner, near_chance)
    trial = _running(study, _hits(0))
    assert not trial.should_prune()
    verdict = pruner.last_verdict(trial.number)
    assert verdict is not None and verdict.p < 1e-5  # the trial test alone would prune
    assert verdict.reference_chance_p > 0.01


def test_no_prune_without_the_outcomes_of_either_trial_or_before_startup():
    study = optuna.create_study(direction="maximize", pruner=_pruner())
    for _ in range(5):  # completed before outcomes were recorded: values only
        study.add_trial(
            create_trial(state=TrialState.COMPLETE, value=0.6, intermediate_values={EPOCH: 0.6})
        )
    assert not _running(study, _hits(0)).should_prune()
    study = _study(_pruner(), REFERENCES)
    bare = study.ask()
    bare.report(0.0, EPOCH)
    assert not bare.should_prune()
    few = _study(_pruner(startup_trials=6), REFERENCES)
    assert not _running(few, _hits(0)).should_prune()
    early = _study(_pruner(warmup_epochs=EPOCH + 1), REFERENCES)
    assert not _running(early, _hits(0)).should_prune()


def test_loss_metric_prunes_a_trial_with_higher_loss_on_most_clips():
    rng = np.random.default_rng(1)
    losses = [rng.gamma(2.0, 0.5, CLIPS).astype(np.float32) for _ in REFERENCES]
    pruner = _pruner(metric="loss")
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for correct, loss in zip(REFERENCES, losses, strict=True):
        study.add_trial(_completed(correct, loss))
    median_loss = sorted(losses, key=lambda x: float(x.mean()))[2]
    worse = _running(study, _hits(100), median_loss + 0.3)
    assert worse.should_prune()
    reason = explain_prune(worse, EPOCH, 0.5)
    assert reason["metric"] == "loss" and reason["gap"] == pytest.approx(0.3, rel=1e-2)
    assert reason["z"] > 5 and "Wilcoxon" in reason["text"]
    same = _running(study, _hits(100), median_loss + rng.normal(0, 0.01, CLIPS).astype(np.float32))
    assert not same.should_prune()


def test_best_reference_compares_with_the_best_completed_trial():
    pruner = _pruner(reference="best")
    study = _study(pruner, REFERENCES)
    trial = _running(study, _hits(120, offset=6))  # the median itself, but 10 below the best
    trial.should_prune()
    assert pruner.last_verdict(trial.number).reference_number == 4


def _curve_study(pruner: PairedPruner, steps_per_epoch: int) -> optuna.Study:
    """Five completed trials that climb 40 -> 80 -> 120 -> 160 of 200 over epochs 1-4."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for i in range(5):
        attrs: dict = {CLASSES_KEY: CLASSES, STEPS_KEY: steps_per_epoch}
        for epoch in range(1, 5):
            attrs.update(outcome_attrs(epoch, _hits(40 * epoch, 3 * i), np.zeros(CLIPS, "f4")))
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE,
                value=0.8,
                intermediate_values={e: 0.2 * e for e in range(1, 5)},
                user_attrs=attrs,
            )
        )
    return study


def _climber(study: optuna.Study, steps_per_epoch: int, right: int) -> optuna.Trial:
    """A running trial at epoch 4 with `right` of 200 clips right."""
    trial = study.ask()
    trial.set_user_attr(STEPS_KEY, steps_per_epoch)
    trial.set_user_attr(CLASSES_KEY, CLASSES)
    for key, value in outcome_attrs(4, _hits(right, 6), np.zeros(CLIPS, "f4")).items():
        trial.set_user_attr(key, value)
    trial.report(right / CLIPS, 4)
    return trial


def test_a_larger_batch_trial_is_compared_at_the_same_optimizer_steps():
    # References take 100 steps an epoch; this trial 25 (4x the batch): its epoch 4 has the
    # steps of their epoch 1, where they stood at 40 of 200. At 50 right it leads them there.
    pruner = _pruner()
    slow = _climber(_curve_study(pruner, steps_per_epoch=100), steps_per_epoch=25, right=50)
    assert not slow.should_prune()
    assert pruner.last_verdict(slow.number).reference_epoch == 1
    # The same outcomes with the references' steps: 50 against their 160 at epoch 4, pruned.
    same = _climber(_curve_study(pruner, steps_per_epoch=100), steps_per_epoch=100, right=50)
    assert same.should_prune()
    reason = explain_prune(same, 4, 0.25)
    assert reason["reference_epoch"] == 4 and reason["reference_value"] == 0.8
    assert "no more optimizer steps" not in reason["text"]


def test_steps_matching_never_compares_at_a_later_epoch_or_before_the_first():
    pruner = _pruner()
    # A smaller batch (4x the steps) is still compared at its own epoch, not the references' 16th.
    fast = _climber(_curve_study(pruner, steps_per_epoch=25), steps_per_epoch=100, right=50)
    assert fast.should_prune()
    assert pruner.last_verdict(fast.number).reference_epoch == 4
    # 2 steps an epoch against 100: fewer steps than the references' first epoch, no test.
    tiny = _climber(_curve_study(pruner, steps_per_epoch=100), steps_per_epoch=2, right=0)
    assert not tiny.should_prune() and pruner.last_verdict(tiny.number) is None
    # Pruned against a reference at an earlier epoch: the reason says which, and why.
    behind = _climber(_curve_study(pruner, steps_per_epoch=100), steps_per_epoch=50, right=10)
    assert behind.should_prune()
    reason = explain_prune(behind, 4, 0.05)
    assert reason["reference_epoch"] == 2 and reason["reference_value"] == 0.4
    assert "at its epoch 2 (no more optimizer steps)" in reason["text"]


def test_slack_judges_against_where_the_reference_stood_with_fewer_steps():
    # References stand at 80 of 200 at epoch 2 and 160 at epoch 4. A slow starter with 76 at
    # epoch 4 trails them at equal steps, but not where they stood with half the steps.
    strict, slack = _pruner(), _pruner(slack=2)
    assert _climber(_curve_study(strict, steps_per_epoch=100), 100, right=76).should_prune()
    slow = _climber(_curve_study(slack, steps_per_epoch=100), 100, right=76)
    assert not slow.should_prune()
    assert slack.last_verdict(slow.number).reference_epoch == 2
    # A trial stuck below chance (20) is still pruned, and the reason names the slack.
    stuck = _climber(_curve_study(slack, steps_per_epoch=100), 100, right=10)
    assert stuck.should_prune()
    reason = explain_prune(stuck, 4, 0.05)
    assert reason["reference_epoch"] == 2 and reason["slack"] == 2
    assert "at its epoch 2 (at most 1/2 of the steps)" in reason["text"]
    # Slack divides the steps-matched epoch: 4 epochs at half the steps -> epoch 2 -> 1.
    half = _climber(_curve_study(slack, steps_per_epoch=100), 50, right=10)
    assert half.should_prune() and slack.last_verdict(half.number).reference_epoch == 1


def test_slack_leaves_no_reference_before_its_first_epoch_and_rejects_below_one():
    pruner = _pruner(slack=3)
    study = _curve_study(pruner, steps_per_epoch=100)
    trial = study.ask()
    trial.set_user_attr(STEPS_KEY, 100)
    trial.set_user_attr(CLASSES_KEY, CLASSES)
    for key, value in outcome_attrs(2, _hits(0), np.zeros(CLIPS, "f4")).items():
        trial.set_user_attr(key, value)
    trial.report(0.0, 2)
    # Epoch 2 / 3 rounds down to 0: no reference has an epoch to compare, so no test.
    assert not trial.should_prune() and pruner.last_verdict(trial.number) is None
    with pytest.raises(ValueError, match="slack"):
        PairedPruner(slack=0.5)
    assert make_pruner(PrunerSpec(kind="paired", slack=2.5), True).slack == 2.5


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("paired", PairedPruner),
        ("median", optuna.pruners.MedianPruner),
        ("successive_halving", optuna.pruners.SuccessiveHalvingPruner),
        ("hyperband", optuna.pruners.HyperbandPruner),
        ("none", optuna.pruners.NopPruner),
    ],
)
def test_each_pruner_kind_builds_its_optuna_pruner(kind, expected):
    pruner = make_pruner(PrunerSpec(kind=kind, alpha=0.05, metric="loss"), True, max_epochs=27)
    assert type(pruner) is expected
    if kind == "paired":
        assert (pruner.alpha, pruner.metric, pruner.reference) == (0.05, "loss", "median")
    assert type(make_pruner(PrunerSpec(kind=kind), False)) is optuna.pruners.NopPruner


def test_hyperband_budget_follows_the_epochs_the_trials_run(tmp_path):
    from search.definition import StudyDefinition, parse_definition
    from search.study import open_study

    raw = {
        "name": "hb",
        "space": {"cell": "gru", "layers": 1, "hidden": 8, "lr": 0.01, "clip_norm": 1.0},
        "pruner": {"kind": "hyperband"},
    }
    definition: StudyDefinition = parse_definition(raw)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'hb.db'}")
    study = open_study(
        "hb",
        storage,
        definition,
        seed=0,
        prune=True,
        feature_dim=4,
        fingerprint="f",
        max_epochs=9,
    )
    assert study.pruner._max_resource == 9  # --epochs 9, not the definition's 40


def _dipper(study: optuna.Study, rights: list[int]) -> optuna.Trial:
    """A running trial with rights[e - 1] of 200 clips right at epochs 1..len(rights)."""
    trial = study.ask()
    trial.set_user_attr(STEPS_KEY, 100)
    trial.set_user_attr(CLASSES_KEY, CLASSES)
    for epoch, right in enumerate(rights, start=1):
        for key, value in outcome_attrs(epoch, _hits(right, 6), np.zeros(CLIPS, "f4")).items():
            trial.set_user_attr(key, value)
        trial.report(right / CLIPS, epoch)
    return trial


def test_best_so_far_judges_a_trial_that_dips_on_what_it_already_has():
    # The references reach 120 and 160 of 200 at epochs 3 and 4; this trial had 158 at
    # epoch 3 and dips to 100 at 4.
    latest, best = _pruner(), _pruner(best_so_far=True)
    dip = [40, 80, 158, 100]
    assert _dipper(_curve_study(latest, steps_per_epoch=100), dip).should_prune()
    kept = _dipper(_curve_study(best, steps_per_epoch=100), dip)
    assert not kept.should_prune()
    verdict = best.last_verdict(kept.number)
    assert (verdict.epoch, verdict.judged_epoch, verdict.value) == (4, 3, 158 / CLIPS)
    # A trial whose best is far behind too is still pruned, and the reason says which epoch.
    behind = _dipper(_curve_study(best, steps_per_epoch=100), [30, 60, 90, 80])
    assert behind.should_prune()
    reason = best.last_verdict(behind.number).reason()
    assert reason["judged_epoch"] == 3 and "its best epoch so far, 3" in reason["text"]
    assert make_pruner(PrunerSpec(kind="paired", best_so_far=True), True).best_so_far
