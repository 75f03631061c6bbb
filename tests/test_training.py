"""The training loop: it learns, clips, stays deterministic, and stops cleanly on divergence."""

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from bench.pruning_replay import Curve, cut_by_patience
from models.evaluate import evaluate
from models.rnn import BagOfFrames, ModelSpec, build_model
from models.training import (
    EpochResult,
    StepResult,
    TrainConfig,
    TrainingDiverged,
    train,
)

DIM, CLASSES, TIME = 8, 4, 12


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass(frozen=True)
class Batch:
    features: torch.Tensor  # (batch, time, DIM), zero beyond each length
    lengths: torch.Tensor  # (batch,)
    labels: torch.Tensor  # (batch,) ids 1..CLASSES


class TensorLoader:
    """The BatchLoader interface (epoch, len, num_examples) over in-memory tensors."""

    def __init__(self, features, lengths, labels, batch_size, shuffle=False, seed=0):
        self.features, self.lengths, self.labels = features, lengths, labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.num_examples = len(labels)

    def __len__(self):
        return math.ceil(self.num_examples / self.batch_size)

    def epoch(self, epoch):
        n = self.num_examples
        g = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        for i in range(0, n, self.batch_size):
            idx = order[i : i + self.batch_size]
            time = int(self.lengths[idx].max())  # trimmed to the longest clip, like BatchLoader
            yield Batch(self.features[idx, :time], self.lengths[idx], self.labels[idx])


def tiny_set(n=16, seed=0, batch_size=4, shuffle=True, noise=0.5):
    """n clips of CLASSES classes: a class-specific direction plus noise, lengths 3..TIME."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES + 1
    centers = torch.randn(CLASSES + 1, DIM, generator=g)
    features = centers[labels][:, None, :] + noise * torch.randn(n, TIME, DIM, generator=g)
    lengths = torch.randint(3, TIME + 1, (n,), generator=g)
    for b, length in enumerate(lengths.tolist()):
        features[b, length:] = 0
    return TensorLoader(features, lengths, labels, batch_size, shuffle=shuffle, seed=seed)


def make_model(seed=0, **spec):
    torch.manual_seed(seed)
    spec = {"kind": "rnn", "input_dim": DIM, "num_classes": CLASSES, "hidden": 32, **spec}
    return build_model(ModelSpec(**spec))


def without_timing(r: EpochResult) -> EpochResult:
    return dataclasses.replace(r, examples_per_s=0.0, seconds=0.0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rnn_overfits_a_tiny_set_to_full_train_accuracy(cell):
    data = tiny_set()
    model = make_model(cell=cell, layers=2)
    result = train(model, data, data, TrainConfig(lr=1e-2, epochs=40, seed=0))
    assert evaluate(model, data).top1 == 1.0
    assert result.best_val_top1 == 1.0
    assert result.epochs[-1].train_top1 == 1.0
    assert result.epochs[-1].train_loss < result.epochs[0].train_loss / 5


@pytest.mark.parametrize("kind", ["rnn", "bag"])
def test_frame_level_supervision_learns_well_above_chance(kind):
    data = tiny_set(n=32, noise=1.0)
    model = make_model(kind=kind, cell="gru", layers=1, frame_level=True)
    config = TrainConfig(lr=1e-2, epochs=25, seed=0, frame_level=True)
    result = train(model, data, data, config)
    assert evaluate(model, data).top1 >= 0.9  # chance is 0.25
    assert result.epochs[-1].train_top1 >= 0.9


def test_clipped_global_norm_never_exceeds_the_limit():
    data = tiny_set()
    model = make_model(cell="lstm")
    post_clip: list[float] = []

    def measure(optimizer, args, kwargs):  # runs inside train, just before each optimizer step
        grads = [
            p.grad
            for group in optimizer.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        post_clip.append(
            torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g) for g in grads])
            ).item()
        )

    handle = register_optimizer_step_pre_hook(measure)
    try:
        result = train(model, data, data, TrainConfig(lr=1e-2, clip_norm=0.05, epochs=3))
    finally:
        handle.remove()
    assert len(post_clip) == 3 * len(data)
    assert max(post_clip) <= 0.05 * (1 + 1e-5)
    assert min(r.max_grad_norm for r in result.epochs) > 0.05  # clipping really happened


def test_same_seed_gives_identical_results_and_weights():
    def run(seed):
        data = tiny_set(shuffle=True)
        model = make_model(seed=seed, cell="gru", layers=2, dropout=0.3)
        return train(model, data, data, TrainConfig(lr=5e-3, epochs=3, seed=seed))

    a, b, other = run(0), run(0), run(1)
    assert [without_timing(r) for r in a.epochs] == [without_timing(r) for r in b.epochs]
    assert all(torch.equal(a.best_state[k], b.best_state[k]) for k in a.best_state)
    assert [without_timing(r) for r in a.epochs] != [without_timing(r) for r in other.epochs]


def test_best_epoch_is_highest_val_top1_then_lowest_val_loss_and_model_keeps_it():
    data, val = tiny_set(seed=0), tiny_set(seed=0, noise=2.0, shuffle=False)
    model = make_model(cell="gru", layers=1)
    result = train(model, data, val, TrainConfig(lr=1e-2, epochs=8))
    top = max(r.val_top1 for r in result.epochs)
    expected = min((r for r in result.epochs if r.val_top1 == top), key=lambda r: r.val_loss)
    assert result.best_epoch == expected.epoch
    assert result.best_val_top1 == top
    assert evaluate(model, val).loss == pytest.approx(expected.val_loss, rel=1e-5)
    assert all(v.device.type == "cpu" for v in result.best_state.values())


def test_without_validation_trains_every_epoch_and_keeps_the_last_epochs_weights():
    data, val = tiny_set(seed=0), tiny_set(seed=0, noise=3.0, shuffle=False)
    config = TrainConfig(lr=1e-2, epochs=6, seed=0)
    last_with_val: dict = {}

    def keep_last(_r):
        last_with_val.update({k: v.detach().clone() for k, v in model_v.state_dict().items()})

    model_v = make_model(cell="gru", layers=1)
    with_val = train(model_v, data, val, config, on_epoch=keep_last)
    assert with_val.best_epoch < 6  # otherwise "last" and "best" could not be told apart

    model = make_model(cell="gru", layers=1)
    result = train(model, data, None, config)
    assert [r.epoch for r in result.epochs] == [1, 2, 3, 4, 5, 6]
    assert result.best_epoch == 6
    assert math.isnan(result.best_val_top1)
    assert all(
        math.isnan(r.val_loss) and math.isnan(r.val_top1) and math.isnan(r.val_top5)
        for r in result.epochs
    )
    # validation draws no random numbers: the same training run, minus the scoring
    assert [r.train_loss for r in result.epochs] == [r.train_loss for r in with_val.epochs]
    assert all(torch.equal(model.state_dict()[k], last_with_val[k]) for k in last_with_val)
    assert all(torch.equal(result.best_state[k], last_with_val[k]) for k in last_with_val)


def expected_stop(epochs: list[EpochResult], patience: int) -> int:
    """The epoch a patience rule stops at, worked out from a full run's history."""
    best = epochs[0]
    for r in epochs:
        if (r.val_top1, -r.val_loss) > (best.val_top1, -best.val_loss):
            best = r
        if r.epoch - best.epoch >= patience:
            return r.epoch
    return epochs[-1].epoch


def test_patience_stops_a_plateaued_run_at_the_epoch_the_rule_names():
    data, val = tiny_set(seed=0), tiny_set(seed=0, noise=3.0, shuffle=False)
    full = train(make_model(cell="gru", layers=1), data, val, TrainConfig(lr=1e-2, epochs=12))
    stop = expected_stop(full.epochs, patience=2)
    assert stop < 12  # the full run does plateau
    model = make_model(cell="gru", layers=1)
    result = train(model, data, val, TrainConfig(lr=1e-2, epochs=12, patience=2))
    assert result.epochs_run == stop and result.stopped_early
    assert [without_timing(r) for r in result.epochs] == [
        without_timing(r) for r in full.epochs[:stop]
    ]
    assert result.best_epoch == stop - 2
    assert evaluate(model, val).loss == pytest.approx(
        full.epochs[stop - 3].val_loss, rel=1e-5
    )  # the model holds the best epoch's weights
    assert not full.stopped_early and full.epochs_run == 12
    # bench/pruning_replay.py cuts full curves where this rule stops: the same epoch.
    curve = Curve({}, [r.val_top1 for r in full.epochs], [], [], [r.val_loss for r in full.epochs])
    assert len(cut_by_patience(curve, 2).top1) == stop
    assert len(cut_by_patience(curve, 0).top1) == 12


def test_a_loss_gain_margin_stops_where_top1_alone_last_rose():
    # A margin no loss can meet (100 nats) leaves top-1 as the only gain: the run stops 2
    # epochs after its last new top-1 high, while its checkpoint still takes ties' lower loss.
    data, val = tiny_set(seed=0), tiny_set(seed=0, noise=3.0, shuffle=False)
    full = train(make_model(cell="gru", layers=1), data, val, TrainConfig(lr=1e-2, epochs=12))
    highs = [
        r.epoch
        for r in full.epochs
        if r.val_top1 > max((e.val_top1 for e in full.epochs[: r.epoch - 1]), default=-1.0)
    ]
    stop = next(
        (r.epoch for r in full.epochs if r.epoch - max(h for h in highs if h <= r.epoch) >= 2),
        12,
    )
    assert stop < expected_stop(full.epochs, patience=2)  # the margin changes the answer here
    config = TrainConfig(lr=1e-2, epochs=12, patience=2, min_loss_gain=100.0)
    result = train(make_model(cell="gru", layers=1), data, val, config)
    assert result.epochs_run == stop and result.stopped_early
    kept = max(full.epochs[:stop], key=lambda r: (r.val_top1, -r.val_loss))
    assert result.best_epoch == kept.epoch
    curve = Curve({}, [r.val_top1 for r in full.epochs], [], [], [r.val_loss for r in full.epochs])
    assert len(cut_by_patience(curve, 2, min_loss_gain=100.0).top1) == stop


def test_epoch_results_carry_per_clip_validation_outcomes_in_loader_order():
    data, val = tiny_set(seed=0), tiny_set(seed=0, noise=3.0, shuffle=False)
    seen: list[EpochResult] = []
    model = make_model(cell="gru", layers=1)
    train(model, data, val, TrainConfig(lr=1e-2, epochs=1), on_epoch=seen.append)
    last = seen[-1]
    assert last.val_correct.dtype == bool and last.val_correct.shape == (val.num_examples,)
    assert last.val_correct.mean() == pytest.approx(last.val_top1)
    assert last.val_clip_loss.dtype == np.float32
    assert float(last.val_clip_loss.mean()) == pytest.approx(last.val_loss, rel=1e-5)
    model.eval()
    with torch.no_grad():
        hits = [model(b.features, b.lengths).argmax(1) == b.labels for b in val.epoch(0)]
    np.testing.assert_array_equal(last.val_correct, torch.cat(hits).numpy())


def test_callbacks_run_per_epoch_and_every_log_every_steps_and_errors_propagate():
    data = tiny_set(batch_size=4)  # 4 steps per epoch
    epochs: list[EpochResult] = []
    steps: list[StepResult] = []

    class Pruned(Exception):
        pass

    def on_epoch(r):
        epochs.append(r)
        if r.epoch == 3:
            raise Pruned

    with pytest.raises(Pruned):
        train(
            make_model(kind="bag"),
            data,
            data,
            TrainConfig(epochs=10, log_every=5),
            on_epoch=on_epoch,
            on_step=steps.append,
        )
    assert [r.epoch for r in epochs] == [1, 2, 3]
    assert [(s.step, s.epoch) for s in steps] == [(5, 2), (10, 3)]
    assert all(0 <= s.top1 <= 1 and s.loss > 0 and s.examples_per_s > 0 for s in steps)


class PoisonedLoader:
    """Wraps a loader and puts a nan into one batch's features."""

    def __init__(self, inner, epoch, step):
        self.inner, self.at = inner, (epoch, step)
        self.num_examples = inner.num_examples

    def __len__(self):
        return len(self.inner)

    def epoch(self, epoch):
        for step, batch in enumerate(self.inner.epoch(epoch), start=1):
            if (epoch, step) == self.at:
                features = batch.features.clone()
                features[0, 0, 0] = float("nan")
                batch = Batch(features, batch.lengths, batch.labels)
            yield batch


def test_nan_feature_stops_the_run_with_its_epoch_and_step_before_any_bad_update():
    data = tiny_set(batch_size=4)
    model = make_model(cell="gru")
    seen: list[dict] = []
    with pytest.raises(TrainingDiverged) as info:
        train(
            model,
            PoisonedLoader(data, epoch=2, step=3),
            data,
            TrainConfig(epochs=5),
            on_epoch=lambda r: seen.append({k: v.clone() for k, v in model.state_dict().items()}),
        )
    e = info.value
    assert (e.epoch, e.step) == (2, 7)
    assert e.reason == (
        "loss became nan at epoch 2 step 3 (global step 7); "
        "lower the learning rate or the clip norm"
    )
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert len(seen) == 1


def test_huge_learning_rate_diverges_with_a_clear_reason():
    data = tiny_set()
    # Adam's steps are about lr in size whatever the gradient, and the cells saturate, so it
    # takes weights near float32's limit (3.4e38) for the logits to overflow
    with pytest.raises(
        TrainingDiverged,
        match=r"^loss became (nan|inf) at epoch \d+ step \d+ "
        r"\(global step \d+\); lower the learning rate",
    ):
        train(make_model(cell="lstm"), data, data, TrainConfig(lr=1e37, clip_norm=0, epochs=5))


def test_learning_rate_beyond_float32_in_adams_first_step_diverges_before_training():
    data = tiny_set()
    model = make_model(cell="lstm")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        TrainingDiverged,
        match=r"becomes inf in float32 .* at epoch 1 step 1 .*"
        r"lower the learning rate",
    ) as info:
        train(model, data, data, TrainConfig(lr=1e38, epochs=1))
    assert (info.value.epoch, info.value.step) == (1, 1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class SqrtAtZero(nn.Module):
    """Finite logits whose gradient is nan: d/dw of 0 * sqrt(w) at w = 0 is 0 * inf."""

    def __init__(self):
        super().__init__()
        self.bag = BagOfFrames(DIM, CLASSES)
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, features, lengths):
        return self.bag(features, lengths) + 0 * torch.sqrt(self.w)


def test_non_finite_gradient_with_finite_loss_is_caught_before_the_step():
    data = tiny_set()
    model = SqrtAtZero()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TrainingDiverged, match=r"^gradient norm became nan at epoch 1 step 1 "):
        train(model, data, data, TrainConfig(epochs=1))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_weight_decay_is_decoupled_and_on_weight_matrices_only():
    data = tiny_set()
    groups: list[tuple[float, list[int]]] = []

    def record(optimizer, args, kwargs):
        if not groups:
            groups.extend(
                (g["weight_decay"], sorted(p.dim() for p in g["params"]))
                for g in optimizer.param_groups
            )
            assert isinstance(optimizer, torch.optim.AdamW)

    torch.manual_seed(0)
    model = BagOfFrames(DIM, CLASSES)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, data, data, TrainConfig(lr=1e-2, weight_decay=0.0, epochs=2))
    plain = model.head.weight.detach().clone()
    model.load_state_dict(start)
    handle = register_optimizer_step_pre_hook(record)
    try:
        train(model, data, data, TrainConfig(lr=1e-2, weight_decay=10.0, epochs=2))
    finally:
        handle.remove()
    assert groups == [(10.0, [2]), (0.0, [1])]  # head.weight decays, head.bias does not
    assert model.head.weight.norm() < 0.9 * plain.norm()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_training_learns_and_stops_on_nan_without_bad_updates():
    data = tiny_set(n=32)
    model = make_model(cell="gru")
    result = train(model, data, data, TrainConfig(lr=1e-2, epochs=30, device="cuda"))
    assert result.best_val_top1 >= 0.9
    model = make_model(cell="gru")
    with pytest.raises(TrainingDiverged, match="epoch 1 step 2"):
        train(
            model,
            PoisonedLoader(data, epoch=1, step=2),
            data,
            TrainConfig(epochs=1, device="cuda", log_every=3),
        )
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_exploding_gradient_norm_ends_the_run_with_its_reason():
    config = TrainConfig(lr=1e2, clip_norm=1.0, epochs=3, explode_grad_norm=50.0)
    with pytest.raises(TrainingDiverged, match="gradient norm exploded") as info:
        train(make_model(layers=1), tiny_set(), tiny_set(shuffle=False), config)
    assert info.value.epoch == 1


def test_exploding_loss_ends_the_run_with_its_reason():
    # Adam's step is about lr whatever the gradient: the cells saturate, the norm stays small
    # and the loss explodes while staying finite.
    config = TrainConfig(lr=1e6, clip_norm=1.0, epochs=3, explode_loss=100.0)
    with pytest.raises(TrainingDiverged, match="loss exploded") as info:
        train(make_model(layers=1), tiny_set(), tiny_set(shuffle=False), config)
    assert info.value.epoch == 1
    unlimited = dataclasses.replace(config, explode_loss=math.inf, epochs=1)
    result = train(make_model(layers=1), tiny_set(), tiny_set(shuffle=False), unlimited)
    assert result.epochs[0].train_loss > 100.0
