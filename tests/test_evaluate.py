"""Evaluation figures (loss, top-k, per-class, confusion) and checkpoint round trips."""

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.evaluate import evaluate, worst_classes
from models.rnn import ModelSpec, build_model

CLASSES = 6  # 7 outputs with background 0, so top-5 is not trivially 1


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass(frozen=True)
class Batch:
    features: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor


class TensorLoader:
    """The BatchLoader interface (epoch, len, num_examples) over in-memory tensors."""

    def __init__(self, features, lengths, labels, batch_size):
        self.features, self.lengths, self.labels = features, lengths, labels
        self.batch_size = batch_size
        self.num_examples = len(labels)

    def __len__(self):
        return math.ceil(self.num_examples / self.batch_size)

    def epoch(self, epoch):
        for i in range(0, self.num_examples, self.batch_size):
            s = slice(i, i + self.batch_size)
            yield Batch(self.features[s], self.lengths[s], self.labels[s])


class FirstFrameLogits(nn.Module):
    """A 'model' whose logits are the first frame's features, so tests choose predictions."""

    def forward(self, features, lengths):
        return features[:, 0, :]


def scripted_set(batch_size):
    """8 clips, labels and logits chosen by hand: (loader, logits, labels)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([1, 1, 2, 2, 3, 4, 4, 6])
    predicted = torch.tensor([1, 2, 2, 2, 5, 4, 1, 6])  # 5 of 8 right
    logits = torch.randn(8, CLASSES + 1, generator=g)
    logits[torch.arange(8), predicted] = 10.0
    logits[torch.arange(8), labels] = torch.where(predicted == labels, 10.0, -10.0)
    logits[1, 1] = 9.0  # clip 1: wrong, but its label comes second: a top-5 hit
    features = torch.zeros(8, 3, CLASSES + 1)
    features[:, 0] = logits
    loader = TensorLoader(features, torch.full((8,), 3), labels, batch_size)
    return loader, logits, labels


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_evaluate_figures_match_a_hand_computed_example(batch_size):
    loader, logits, labels = scripted_set(batch_size)
    ev = evaluate(FirstFrameLogits(), loader)
    assert ev.examples == 8
    assert ev.top1 == 5 / 8
    assert ev.top5 == 6 / 8  # clip 1 via its second-best logit; clips 4 and 6 have label -10
    assert ev.loss == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    expected = np.zeros((CLASSES + 1, CLASSES + 1), dtype=np.int64)
    for t, p in [(1, 1), (1, 2), (2, 2), (2, 2), (3, 5), (4, 4), (4, 1), (6, 6)]:
        expected[t, p] += 1
    np.testing.assert_array_equal(ev.confusion, expected)
    assert ev.confusion.dtype == np.int64
    np.testing.assert_array_equal(
        ev.per_class,
        [np.nan, 0.5, 1.0, 0.0, 0.5, np.nan, 1.0],  # no clips of ids 0 and 5
    )


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_evaluate_keeps_each_clips_outcome_and_loss_in_loader_order(batch_size):
    loader, logits, labels = scripted_set(batch_size)
    ev = evaluate(FirstFrameLogits(), loader)
    np.testing.assert_array_equal(ev.correct, [1, 0, 1, 1, 0, 1, 0, 1])
    assert ev.correct.dtype == bool
    assert ev.clip_loss.dtype == np.float32
    np.testing.assert_allclose(
        ev.clip_loss, F.cross_entropy(logits, labels, reduction="none").numpy(), rtol=1e-6
    )


def test_evaluate_scores_in_fp32_even_inside_a_bf16_autocast_region():
    model = build_model(ModelSpec(input_dim=CLASSES + 1, num_classes=CLASSES, hidden=8))
    loader, _, _ = scripted_set(4)
    plain = evaluate(model, loader)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = evaluate(model, loader)
    np.testing.assert_array_equal(inside.clip_loss, plain.clip_loss)


def test_worst_classes_lists_lowest_accuracy_first_and_skips_empty_classes():
    loader, _, _ = scripted_set(8)
    ev = evaluate(FirstFrameLogits(), loader)
    assert worst_classes(ev, 3) == [(3, 0.0, 0, 1), (1, 0.5, 1, 2), (4, 0.5, 1, 2)]


def test_evaluate_restores_training_mode_and_rejects_an_empty_loader():
    model = build_model(ModelSpec(input_dim=CLASSES + 1, num_classes=CLASSES, hidden=8))
    loader, _, _ = scripted_set(4)
    model.train()
    evaluate(model, loader)
    assert model.training
    empty = TensorLoader(torch.zeros(0, 3, CLASSES + 1), torch.zeros(0), torch.zeros(0), 4)
    with pytest.raises(ValueError, match="no clips"):
        evaluate(model, empty)


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec(
            kind="rnn",
            input_dim=5,
            num_classes=CLASSES,
            cell="lstm",
            hidden=8,
            layers=2,
            dropout=0.2,
        ),
        ModelSpec(
            kind="rnn",
            input_dim=5,
            num_classes=CLASSES,
            cell="gru",
            hidden=8,
            layers=1,
            frame_level=True,
        ),
        ModelSpec(kind="bag", input_dim=5, num_classes=CLASSES),
    ],
)
def test_checkpoint_round_trip_gives_identical_logits(tmp_path, spec):
    torch.manual_seed(0)
    model = build_model(spec).eval()
    extra = {"epoch": np.int64(3), "scores": {"top1": np.float32(0.5)}, "history": [1.5, 2.5]}
    path = tmp_path / "sub" / "model.pt"
    save_checkpoint(path, model, spec, extra=extra)
    loaded, loaded_spec, loaded_extra = load_checkpoint(path)
    assert loaded_spec == spec
    assert loaded_extra == {"epoch": 3, "scores": {"top1": 0.5}, "history": [1.5, 2.5]}
    assert not loaded.training
    x = torch.randn(3, 6, 5)
    lengths = torch.tensor([6, 2, 4])
    for b, n in enumerate(lengths.tolist()):
        x[b, n:] = 0
    with torch.no_grad():
        assert_close(loaded(x, lengths), model(x, lengths), rtol=0, atol=0)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left


def test_checkpoint_extra_must_be_plain_data(tmp_path):
    model = build_model(ModelSpec(kind="bag", input_dim=4, num_classes=2))
    with pytest.raises(TypeError, match=r"extra\.run is a object"):
        save_checkpoint(
            tmp_path / "m.pt",
            model,
            ModelSpec(kind="bag", input_dim=4, num_classes=2),
            extra={"run": object()},
        )


def test_unreadable_checkpoints_raise_checkpoint_error_naming_the_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"missing\.pt does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*garbage\.pt"):
        load_checkpoint(garbage)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not a format-1 checkpoint"):
        load_checkpoint(other)
