"""Which epoch is a run's best, and when a run has stopped improving (patience).

Two questions with two answers. The best epoch, whose weights a run keeps, is the highest
validation top-1, ties to the lower validation loss: of two epochs that classify the same
clips, the more confident one is the better checkpoint. The patience clock is stricter: it
restarts on a higher top-1, or on a loss at least `min_loss_gain` below the loss where it last
restarted. Without that margin a validation set that is all right (or all wrong, a trial
stuck at chance) keeps restarting it, because its loss keeps creeping down while nothing
the study scores can change: a trial at 404 of 404 from epoch 12 trained to epoch 40
(BENCHMARKS.md, search quality). The margin is cumulative, as Keras's `min_delta` is: a loss
that falls slowly but steadily still restarts the clock once it has fallen by the margin, so
a trial whose loss moves before its top-1 does (a slow starter) keeps training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class EarlyStopping:
    """Tracks a run's best epoch and its patience clock, fed one epoch's validation at a time.

    patience: epochs without a gain before should_stop says so; 0 never stops.
    min_loss_gain: how far (nats) the validation loss must fall, at an equal top-1, to count.
    """

    patience: int
    min_loss_gain: float = 0.0
    best_epoch: int = 0  # the checkpoint: highest top-1, ties to the lower loss
    best_top1: float = -math.inf
    best_loss: float = math.inf
    gain_epoch: int = 0  # where the patience clock last restarted
    gain_top1: float = -math.inf
    gain_loss: float = math.inf

    def __post_init__(self) -> None:
        if self.patience < 0 or not self.min_loss_gain >= 0:
            raise ValueError(
                f"EarlyStopping: patience {self.patience} and min_loss_gain "
                f"{self.min_loss_gain} must be >= 0"
            )

    def update(self, epoch: int, top1: float, loss: float) -> bool:
        """Record one epoch's validation; return whether it is the new best checkpoint."""
        if top1 > self.gain_top1 or (
            top1 == self.gain_top1
            and loss < self.gain_loss
            and self.gain_loss - loss >= self.min_loss_gain
        ):
            self.gain_epoch, self.gain_top1, self.gain_loss = epoch, top1, loss
        is_best = self.best_epoch == 0 or (top1, -loss) > (self.best_top1, -self.best_loss)
        if is_best:
            self.best_epoch, self.best_top1, self.best_loss = epoch, top1, loss
        return is_best

    def should_stop(self, epoch: int) -> bool:
        """Return whether `patience` epochs have passed since the clock last restarted."""
        return bool(self.patience) and epoch - self.gain_epoch >= self.patience
