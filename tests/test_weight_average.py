"""The refit's end point: the mean of the weights at the ends of its last epochs."""

import pytest
import torch
from test_training import make_model, tiny_set

from models.training import TrainConfig, train
from models.weight_average import EpochAverage

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train_keeping_every_epoch(count: int, epochs: int = 5):
    """Train a tiny model; return its EpochAverage and the weights at each epoch's end."""
    model = make_model()
    average = EpochAverage(model, epochs, count)
    ends = []

    def on_epoch(result):
        average(result)
        ends.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    train(model, tiny_set(), None, TrainConfig(lr=3e-2, epochs=epochs), on_epoch=on_epoch)
    return average, ends


@pytest.mark.parametrize("count", [1, 3, 9])
def test_the_average_is_the_mean_of_the_last_epochs_weights(count):
    average, ends = _train_keeping_every_epoch(count)
    kept = ends[-count:]  # all 5 when count is larger
    assert average.averaged == len(kept)
    mean = average.state_dict()
    assert set(mean) == set(ends[-1])
    for name, value in mean.items():
        expected = torch.stack([e[name] for e in kept]).mean(dim=0)
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    # The weights moved between the epochs averaged: the mean is not the last epoch's.
    if len(kept) > 1:
        assert any(not torch.equal(mean[n], ends[-1][n]) for n in mean)


def test_bad_counts_and_an_average_of_nothing_are_errors():
    model = make_model()
    with pytest.raises(ValueError, match="must be >= 1"):
        EpochAverage(model, 5, 0)
    with pytest.raises(ValueError, match="no epoch from 4 on has ended"):
        EpochAverage(model, 5, 2).state_dict()
