"""The patience clock and the best checkpoint of models.early_stopping, epoch by epoch."""

import random

import pytest

from models.early_stopping import EarlyStopping


def stop_epoch(stopping: EarlyStopping, curve: list[tuple[float, float]]) -> int | None:
    """Feed (top-1, loss) epochs in order; return the epoch should_stop first says so, or None."""
    for epoch, (top1, loss) in enumerate(curve, start=1):
        stopping.update(epoch, top1, loss)
        if stopping.should_stop(epoch):
            return epoch
    return None


def test_a_saturated_run_stops_although_its_loss_keeps_creeping_down():
    # All clips right from epoch 3; the loss falls 0.001 nats an epoch, as confidence grows.
    curve = [(0.5, 1.0), (0.9, 0.3)] + [(1.0, 0.1 - 0.001 * i) for i in range(20)]
    assert stop_epoch(EarlyStopping(patience=4, min_loss_gain=0.01), curve) == 3 + 4
    # Counted as gains, the creeping loss would keep it training to the end.
    assert stop_epoch(EarlyStopping(patience=4, min_loss_gain=0.0), curve) is None


def test_a_slow_starter_whose_loss_falls_before_its_top1_keeps_training():
    # Top-1 flat at chance for 12 epochs while the loss falls 0.004 an epoch: below the gain
    # each epoch, above it every 3 epochs, so the clock restarts before patience 4 runs out.
    curve = [(0.01, 4.6 - 0.004 * i) for i in range(12)] + [(0.3, 3.0), (0.7, 1.0)]
    stopping = EarlyStopping(patience=4, min_loss_gain=0.01)
    assert stop_epoch(stopping, curve) is None
    assert stopping.gain_epoch == 14
    # The same start with a loss that has stopped moving is stopped.
    flat = [(0.01, 4.6 - 0.0001 * i) for i in range(12)]
    assert stop_epoch(EarlyStopping(patience=4, min_loss_gain=0.01), flat) == 5


def test_the_best_checkpoint_still_takes_the_lower_loss_on_a_tie():
    stopping = EarlyStopping(patience=3, min_loss_gain=0.05)
    for epoch, (top1, loss) in enumerate([(0.8, 0.50), (0.8, 0.49), (0.8, 0.48)], start=1):
        stopping.update(epoch, top1, loss)
    assert (stopping.best_epoch, stopping.best_loss) == (3, 0.48)  # the checkpoint moved
    assert stopping.gain_epoch == 1  # the clock did not: 0.02 nats is under the gain
    assert stopping.update(4, 0.79, 0.10) is False  # a lower top-1 is never the best


def test_a_zero_gain_is_the_lexicographic_rule_top1_then_lower_loss():
    rng = random.Random(0)
    for _ in range(200):
        curve = [(rng.choice([0.1, 0.2, 0.3]), rng.choice([1.0, 0.9, 0.8])) for _ in range(15)]
        best, best_epoch, expected = None, 0, None
        for epoch, (top1, loss) in enumerate(curve, start=1):
            if best is None or (top1, -loss) > best:
                best, best_epoch = (top1, -loss), epoch
            if epoch - best_epoch >= 3:
                expected = epoch
                break
        stopping = EarlyStopping(patience=3)
        assert stop_epoch(stopping, curve) == expected
        assert stopping.best_epoch == stopping.gain_epoch == best_epoch


def test_patience_zero_never_stops():
    assert stop_epoch(EarlyStopping(patience=0, min_loss_gain=1.0), [(0.1, 1.0)] * 30) is None


@pytest.mark.parametrize("patience, gain", [(-1, 0.0), (2, -0.01), (2, float("nan"))])
def test_negative_settings_are_refused(patience, gain):
    with pytest.raises(ValueError, match="must be >= 0"):
        EarlyStopping(patience, gain)
