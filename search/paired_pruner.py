"""The noise-aware pruner: a trial is pruned only when it is significantly worse, clip by clip.

At epoch e (from warmup_epochs on, once startup_trials trials have completed) the reference
is the completed trial whose value is the median of those recorded (or the best), each
completed trial read at the latest of its epochs that has had no more optimizer steps and no
more epochs than this trial: a batch-64 trial at epoch 8 has taken the steps a batch-16 trial
takes in 2 epochs, and judged at equal epochs it trails only because it has updated 4x less
(the late climber the search-quality audit found). A completed trial that patience stopped
before that epoch is no reference there (holding it at its last epoch was measured and pruned
no better: BENCHMARKS.md, "Holding stopped trials"). With slack k > 1 the reference is read at
1/k of that epoch instead (rounded down): a trial is then pruned only when it is significantly
behind where the reference stood with k times fewer steps, so a slow starter that learns at
half the pace (k = 2) survives the first epochs, while a trial stuck at chance does not. This
trial is tested against the reference on the same validation clips, one-sided. With
best_so_far each is read at its best epoch up to then (highest top-1, ties to the later): a
trial's value is the best epoch its checkpoint keeps, so one that dips for an epoch (0.988,
then 0.899 in the 50-trial search-quality study) is judged on what it already has.

- top1: exact McNemar test on the discordant clips (b only the reference gets right, c only
  this trial): p = P(Binom(b + c, 1/2) >= b).
- loss: Wilcoxon signed-rank test on the per-clip loss differences. Chosen over a paired
  bootstrap because it is deterministic (same study, same prunes: no resampling seed) and
  ranks, so a few confidently wrong clips with huge cross entropies cannot decide alone.

It prunes only when p < alpha AND the reference's top-1 is itself significantly above chance
(exact binomial test against 1 / num_classes at the same alpha): while the median curve is
within noise of chance nothing is pruned, whatever the metric. Missing outcomes for either
trial (e.g. trials recorded before outcomes were kept) mean no prune.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from search.clip_outcomes import CLASSES_KEY, STEPS_KEY, read_correct, read_loss
from search.paired_tests import (
    binom_upper_tail,
    mcnemar_worse,
    paired_standard_error,
    wilcoxon_greater,
)

METRICS = ("top1", "loss")
REFERENCES = ("median", "best")


@dataclass(frozen=True)
class Verdict:
    """One paired comparison of a trial with its reference at one epoch."""

    prune: bool
    epoch: int
    metric: str
    value: float  # this trial's figure at epoch: top-1, or mean loss
    reference_value: float
    reference_number: int
    reference_epoch: int  # the reference's epoch compared: no more steps than this trial's
    test: str
    p: float
    alpha: float
    gap: float  # how far the trial trails, in points of top-1 or in mean loss
    noise: float  # standard error of the paired difference, same units as gap
    clips: int
    b: int | None = None  # McNemar's discordant clips (top1 only)
    c: int | None = None
    z: float | None = None  # Wilcoxon's statistic (loss only)
    reference_chance_p: float = 1.0  # reference's top-1 against chance
    slack: float = 1.0  # the reference was read at 1/slack of this trial's steps
    judged_epoch: int | None = None  # best_so_far: the trial's epoch that was judged

    def reason(self) -> dict[str, Any]:
        """Return the prune reason as stored in the trial's `prune_reason` user attr."""
        unit = "points" if self.metric == "top1" else "loss"
        stat = f"b={self.b} c={self.c}" if self.metric == "top1" else f"z={self.z:.2f}"
        if self.slack > 1:
            at = f" at its epoch {self.reference_epoch} (at most 1/{self.slack:g} of the steps)"
        elif self.reference_epoch != self.epoch:
            at = f" at its epoch {self.reference_epoch} (no more optimizer steps)"
        else:
            at = ""
        mine = (
            f" (its best epoch so far, {self.judged_epoch})"
            if self.judged_epoch not in (None, self.epoch)
            else ""
        )
        text = (
            f"pruned at epoch {self.epoch}: val {self.metric} {self.value:.4f}{mine} vs "
            f"{self.reference_value:.4f} of trial {self.reference_number}{at} on the same "
            f"{self.clips} clips, {self.test} {stat} p={self.p:.2g} < {self.alpha:g}; "
            f"gap {self.gap:.3g} {unit} beats noise {self.noise:.3g}"
        )
        fields = {
            "kind": "paired",
            "epoch": self.epoch,
            "metric": self.metric,
            "value": self.value,
            "reference_value": self.reference_value,
            "reference_trial": self.reference_number,
            "reference_epoch": self.reference_epoch,
            "test": self.test,
            "p": self.p,
            "alpha": self.alpha,
            "gap": self.gap,
            "noise": self.noise,
            "clips": self.clips,
            "reference_chance_p": self.reference_chance_p,
            "slack": self.slack,
            "judged_epoch": self.judged_epoch,
            "text": text,
        }
        if self.metric == "top1":
            fields.update(b=self.b, c=self.c)
        else:
            fields.update(z=self.z)
        return fields


def _outcome(trial: FrozenTrial, epoch: int, metric: str) -> np.ndarray | None:
    if metric == "top1":
        return read_correct(trial.user_attrs, epoch)
    return read_loss(trial.user_attrs, epoch)


def matched_epoch(
    trial: FrozenTrial, reference: FrozenTrial, epoch: int, slack: float = 1.0
) -> int:
    """Return the reference's epoch to compare with trial's epoch: no more steps, no more epochs.

    Either trial without its steps per epoch (recorded before steps were kept) means epoch.
    slack k: the reference is read at 1/k of that epoch, rounded down (0: it has none).
    """
    mine, theirs = trial.user_attrs.get(STEPS_KEY), reference.user_attrs.get(STEPS_KEY)
    matched = epoch
    if isinstance(mine, int) and isinstance(theirs, int) and mine > 0 and theirs > 0:
        matched = min(epoch, epoch * mine // theirs)
    return int(matched / slack)


def best_epoch_so_far(trial: FrozenTrial, upto: int) -> int:
    """Return the epoch (at most upto) of trial's highest reported top-1, ties to the later one.

    That is the checkpoint a trial keeps, up to a tie on top-1 (broken by the loss there), so a
    trial that dips for an epoch is judged on what it already has.
    """
    reported = [(v, e) for e, v in trial.intermediate_values.items() if e <= upto]
    return max(reported)[1] if reported else upto


def _score(outcome: np.ndarray) -> float:
    return float(np.mean(outcome, dtype=np.float64))


class PairedPruner(optuna.pruners.BasePruner):
    """Prune a trial only when a paired test on the same clips finds it worse than a reference."""

    def __init__(
        self,
        *,
        metric: str = "top1",
        reference: str = "median",
        alpha: float = 0.001,
        slack: float = 1.0,
        best_so_far: bool = False,
        startup_trials: int = 5,
        warmup_epochs: int = 2,
    ) -> None:
        if metric not in METRICS or reference not in REFERENCES or not 0 < alpha < 1:
            raise ValueError(
                f"PairedPruner: metric {metric!r}, reference {reference!r} or "
                f"alpha {alpha!r} is not one of {METRICS}, {REFERENCES}, (0, 1)"
            )
        if not slack >= 1:
            raise ValueError(f"PairedPruner: slack {slack!r} must be at least 1 (1: no slack)")
        self.metric, self.reference, self.alpha, self.slack = metric, reference, alpha, slack
        self.best_so_far = best_so_far  # judge each trial at its best epoch so far, not its latest
        self.startup_trials, self.warmup_epochs = startup_trials, warmup_epochs
        self._verdicts: dict[int, Verdict] = {}  # by trial number: the reason for the objective
        self._lock = threading.Lock()  # --jobs N trials share one pruner

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Return whether trial is significantly worse than the reference at its last epoch."""
        verdict = self.judge(study, trial)
        with self._lock:
            if verdict is None:
                self._verdicts.pop(trial.number, None)
            else:
                self._verdicts[trial.number] = verdict
        return verdict is not None and verdict.prune

    def last_verdict(self, number: int) -> Verdict | None:
        """Return the last comparison made for trial `number` in this process, if any."""
        with self._lock:
            return self._verdicts.get(number)

    def judge(self, study: optuna.Study, trial: FrozenTrial) -> Verdict | None:
        """Return the comparison at trial's last epoch, or None where no test can be made."""
        epoch = trial.last_step
        if epoch is None or epoch < self.warmup_epochs:
            return None
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(completed) < self.startup_trials:
            return None
        own = best_epoch_so_far(trial, epoch) if self.best_so_far else epoch
        mine = _outcome(trial, own, self.metric)
        classes = trial.user_attrs.get(CLASSES_KEY)
        if mine is None or not isinstance(classes, int) or classes < 1:
            return None
        peers = []
        for t in completed:
            at = matched_epoch(trial, t, epoch, self.slack)
            if at < 1:
                continue
            # A reference that stopped before `at` has no outcome there and stays out.
            if self.best_so_far and at in t.intermediate_values:
                at = best_epoch_so_far(t, at)
            theirs = _outcome(t, at, self.metric)
            correct = theirs if self.metric == "top1" else read_correct(t.user_attrs, at)
            if theirs is not None and correct is not None and len(theirs) == len(mine):
                peers.append((t, at, theirs, correct))
        if not peers:
            return None
        # Higher is better for top-1, lower for loss; ties go to the lower trial number.
        sign = 1.0 if self.metric == "top1" else -1.0
        peers.sort(key=lambda p: (sign * _score(p[2]), -p[0].number))
        ref, ref_epoch, theirs, ref_correct = (
            peers[-1] if self.reference == "best" else peers[(len(peers) - 1) // 2]
        )
        # Above chance: the reference's right answers against guessing one of the classes.
        chance_p = binom_upper_tail(int(ref_correct.sum()), len(ref_correct), 1 / classes)
        if self.metric == "top1":
            b, c, p = mcnemar_worse(mine, theirs)
            diff = theirs.astype(np.float64) - mine  # > 0 where the reference is right alone
            gap, noise = 100 * float(diff.mean()), 100 * paired_standard_error(diff)
            test, extra = "exact one-sided McNemar", {"b": b, "c": c}
        else:
            diff = mine.astype(np.float64) - theirs  # > 0 where this trial's loss is higher
            z, p, _ = wilcoxon_greater(diff)
            gap, noise = float(diff.mean()), paired_standard_error(diff)
            test, extra = "one-sided Wilcoxon signed-rank", {"z": z}
        prune = p < self.alpha and chance_p < self.alpha and gap > 0
        return Verdict(
            prune=prune,
            epoch=epoch,
            metric=self.metric,
            value=_score(mine),
            reference_value=_score(theirs),
            reference_number=ref.number,
            reference_epoch=ref_epoch,
            test=test,
            p=p,
            alpha=self.alpha,
            gap=gap,
            noise=noise,
            clips=len(mine),
            reference_chance_p=chance_p,
            slack=self.slack,
            judged_epoch=own if self.best_so_far else None,
            **extra,
        )
