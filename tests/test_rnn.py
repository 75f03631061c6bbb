"""The classifiers: read-out at the last real frame, padding invariance, order (in)sensitivity."""

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from models.rnn import (
    BagOfFrames,
    ModelSpec,
    RNNClassifier,
    build_model,
    frame_cross_entropy,
    masked_mean,
)

DIM, CLASSES = 8, 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def padded_batch(lengths: list[int], time: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random features (batch, time, DIM), zero beyond each length."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), time, DIM, generator=g)
    for b, n in enumerate(lengths):
        x[b, n:] = 0
    return x, torch.tensor(lengths)


def pad(x: torch.Tensor, extra: int) -> torch.Tensor:
    """Append `extra` zero frames to every clip."""
    return torch.cat([x, x.new_zeros(x.shape[0], extra, x.shape[2])], dim=1)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("frame_level", [False, True])
@pytest.mark.parametrize("extra", [1, 7, 40, 250])
def test_padding_with_zero_frames_does_not_change_logits(cell, frame_level, extra):
    torch.manual_seed(0)
    model = RNNClassifier(DIM, CLASSES, cell=cell, hidden=16, layers=2, frame_level=frame_level)
    model.eval()
    x, lengths = padded_batch([5, 12, 1, 9], time=12)
    with torch.no_grad():
        reference = model(x, lengths)
        padded = model(pad(x, extra), lengths)
    assert reference.shape == (4, CLASSES + 1)
    assert_close(padded, reference)


def test_readout_is_at_the_last_real_frame_not_the_last_step():
    torch.manual_seed(0)
    model = RNNClassifier(DIM, CLASSES, cell="gru", hidden=16, layers=1).eval()
    x, lengths = padded_batch([3, 6], time=6)
    with torch.no_grad():
        frames = model.frame_logits(x, lengths)  # (2, 6, CLASSES + 1)
        logits = model(x, lengths)
    assert_close(logits[0], frames[0, 2])
    assert_close(logits[1], frames[1, 5])
    assert not torch.allclose(logits[0], frames[0, 5])


def test_frame_level_logits_are_the_mean_over_real_frames_only():
    torch.manual_seed(0)
    model = RNNClassifier(DIM, CLASSES, cell="lstm", hidden=16, frame_level=True).eval()
    x, lengths = padded_batch([2, 5], time=5)
    with torch.no_grad():
        frames = model.frame_logits(x, lengths)
        logits = model(x, lengths)
    assert_close(logits[0], frames[0, :2].mean(dim=0))
    assert_close(logits[1], frames[1].mean(dim=0))


@pytest.mark.parametrize("extra", [1, 30])
def test_bag_of_frames_padding_does_not_change_logits(extra):
    torch.manual_seed(0)
    model = BagOfFrames(DIM, CLASSES)
    x, lengths = padded_batch([5, 12, 1], time=12)
    with torch.no_grad():
        assert_close(model(pad(x, extra), lengths), model(x, lengths))


def test_bag_of_frames_ignores_frame_order_but_the_rnn_does_not():
    torch.manual_seed(0)
    bag = BagOfFrames(DIM, CLASSES)
    rnn = RNNClassifier(DIM, CLASSES, cell="gru", hidden=16).eval()
    x, lengths = padded_batch([9, 6], time=10)
    shuffled = x.clone()
    g = torch.Generator().manual_seed(1)
    for b, n in enumerate(lengths.tolist()):
        shuffled[b, :n] = x[b, torch.randperm(n, generator=g)]
    with torch.no_grad():
        assert_close(bag(shuffled, lengths), bag(x, lengths))
        difference = (rnn(shuffled, lengths) - rnn(x, lengths)).abs().max()
    assert difference > 1e-3


def test_frame_cross_entropy_ignores_padding_and_weighs_clips_equally():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, CLASSES + 1, generator=g)
    logits[0, 2:] = float("nan")  # padding may hold anything
    lengths, labels = torch.tensor([2, 4]), torch.tensor([1, 3])
    expected = (
        F.cross_entropy(logits[0, :2], labels[[0, 0]]) + F.cross_entropy(logits[1], labels[[1] * 4])
    ) / 2
    assert_close(frame_cross_entropy(logits, lengths, labels), expected)


def test_masked_mean_averages_real_frames():
    x = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [4.0], [6.0]]])
    assert_close(masked_mean(x, torch.tensor([2, 3])), torch.tensor([[2.0], [4.0]]))


@pytest.mark.parametrize(
    ("spec", "kind", "params"),
    [
        (
            ModelSpec(
                kind="rnn", input_dim=DIM, num_classes=CLASSES, cell="lstm", hidden=16, layers=3
            ),
            RNNClassifier,
            # LSTM: 4 gates x (input + recurrent weights + 2 biases) per layer; then the head
            4 * 16 * (DIM + 16 + 2) + 2 * 4 * 16 * (16 + 16 + 2) + 16 * 5 + 5,
        ),
        (ModelSpec(kind="bag", input_dim=DIM, num_classes=CLASSES), BagOfFrames, DIM * 5 + 5),
    ],
)
def test_build_model_follows_the_spec(spec, kind, params):
    model = build_model(spec)
    assert isinstance(model, kind)
    assert sum(p.numel() for p in model.parameters()) == params
    x, lengths = padded_batch([3, 4], time=4)
    assert model(x, lengths).shape == (2, CLASSES + 1)


@pytest.mark.parametrize(
    "bad",
    [{"kind": "cnn"}, {"cell": "rnn"}, {"layers": 0}, {"hidden": 0}, {"dropout": 1.0}],
)
def test_model_spec_rejects_bad_values(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ModelSpec(**bad)


def test_one_layer_dropout_still_acts_in_training_mode():
    torch.manual_seed(0)
    model = RNNClassifier(DIM, CLASSES, cell="gru", hidden=16, layers=1, dropout=0.5)
    x, lengths = padded_batch([4, 4], time=4)
    model.train()
    assert not torch.equal(model(x, lengths), model(x, lengths))
    model.eval()
    assert torch.equal(model(x, lengths), model(x, lengths))
