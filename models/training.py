"""The training loop: AdamW, global-norm clipping, bf16 autocast on CUDA, validation every epoch.

One call to `train` is one trial's training run. It keeps the best epoch's weights (by
validation top-1, ties to the lower validation loss), stops early after `patience` epochs
without a gain (a higher top-1, or a loss `min_loss_gain` lower: models.early_stopping),
reports each epoch and every `log_every` steps through callbacks, and stops with
TrainingDiverged the moment a loss or gradient norm is not finite, never stepping the
optimizer on such gradients. Validation is scored in fp32.

Divergence checks without a GPU sync per step: each step's loss, gradient norm and hit
count stay on the device and are read back together every `log_every` steps and at the end
of the epoch (on the CPU every step, where reading is free). On CUDA a GradScaler with its
scale fixed at 1 (bf16 needs no loss scaling) does the on-device part: it skips the
optimizer step of any step whose gradients hold an inf or nan, so the weights stay clean
until the batched check raises.

Loss: cross entropy of the clip logits; with frame_level, each real frame's cross entropy
against its clip's label, averaged within each clip and then over clips (the training
top-1 then scores the mean of the frame logits, as RNNClassifier(frame_level=True) does).
Optimizer: AdamW, i.e. Adam with decoupled weight decay, applied to weight matrices only.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.early_stopping import EarlyStopping
from models.evaluate import evaluate
from models.rnn import frame_cross_entropy, masked_mean
from models.seeding import reseed

if TYPE_CHECKING:
    from datasets.batches import BatchLoader

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """How to train: Adam(W) with global-norm clipping; by default lr 1e-3 and clip 1.0."""

    lr: float = 1e-3
    clip_norm: float = 1.0  # max global gradient norm; <= 0 measures the norm but never clips
    weight_decay: float = 0.0  # decoupled (AdamW), on weight matrices only, not biases
    epochs: int = 10  # the most epochs a run trains (fewer when patience stops it)
    patience: int = 0  # epochs without a validation gain before a stop; 0 off
    min_loss_gain: float = 0.0  # nats the val loss must fall, at an equal top-1, to be a gain
    seed: int = 0  # seeds dropout; seed model initialisation yourself before build_model
    device: str = "cpu"
    amp: bool = True  # bf16 autocast, on CUDA only
    frame_level: bool = False  # loss on every real frame instead of the clip read-out
    log_every: int = 20  # steps between on_step calls (and between divergence checks on CUDA)
    # a pre-clip gradient norm above this ends the run as diverged
    explode_grad_norm: float = math.inf
    explode_loss: float = math.inf  # so does a training loss above this

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if self.patience < 0 or not self.min_loss_gain >= 0:
            raise ValueError(
                f"TrainConfig.patience and min_loss_gain must be >= 0, got {self.patience}, "
                f"{self.min_loss_gain}"
            )
        if self.epochs < 1 or self.log_every < 1:
            raise ValueError(
                f"TrainConfig.epochs and log_every must be >= 1, got {self.epochs}, "
                f"{self.log_every}"
            )


@dataclass(frozen=True)
class EpochResult:
    """One epoch's figures; validation over the num_classes + 1 logits."""

    epoch: int  # 1-based
    train_loss: float
    train_top1: float
    val_loss: float
    val_top1: float
    val_top5: float
    examples_per_s: float  # training examples per second (data loading included, validation not)
    max_grad_norm: float  # largest pre-clip global gradient norm this epoch
    seconds: float  # the whole epoch, validation included
    # Per validation clip in the loader's order (None without validation): for paired pruning.
    val_correct: np.ndarray | None = field(default=None, compare=False, repr=False)  # bool
    val_clip_loss: np.ndarray | None = field(default=None, compare=False, repr=False)  # float32


@dataclass(frozen=True)
class StepResult:
    """Training figures over the last `log_every` steps (or fewer, after an epoch starts)."""

    step: int  # global step, 1-based, counting across epochs
    epoch: int
    loss: float
    top1: float
    examples_per_s: float


@dataclass
class TrainResult:
    """What a run produced; on return the model holds best_state's weights."""

    epochs: list[EpochResult]
    best_epoch: int
    best_val_top1: float
    best_state: dict  # state_dict of the best epoch, on CPU
    examples_per_s: float  # all training examples over all training time
    epochs_run: int  # epochs trained: config.epochs unless patience stopped the run
    stopped_early: bool  # patience ended the run before config.epochs


class TrainingDiverged(RuntimeError):
    """A loss or gradient norm became nan or inf; .reason says where and what to change."""

    def __init__(self, reason: str, epoch: int, step: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.epoch = epoch
        self.step = step  # global step, as in StepResult

    def __reduce__(self):  # keeps the fields when a process pool pickles the exception
        return type(self), (self.reason, self.epoch, self.step)


@dataclass(frozen=True)
class _Step:
    """One optimizer step's figures once read back from the device."""

    step: int
    epoch_step: int
    loss: float
    grad_norm: float
    correct: float
    size: int


class _StepLog:
    """Per-step figures held on the device, read back in one transfer (one GPU sync)."""

    def __init__(self) -> None:
        self._figures: list[Tensor] = []
        self._meta: list[tuple[int, int, int]] = []

    def add(
        self, step: int, epoch_step: int, loss: Tensor, norm: Tensor, correct: Tensor, size: int
    ) -> None:
        self._figures.append(torch.stack([loss.detach().float(), norm.float(), correct.float()]))
        self._meta.append((step, epoch_step, size))

    def read(self) -> list[_Step]:
        if not self._figures:
            return []
        rows = torch.stack(self._figures).tolist()  # (steps, 3); the one sync
        steps = [
            _Step(s, e, loss, norm, hits, n)
            for (s, e, n), (loss, norm, hits) in zip(self._meta, rows, strict=True)
        ]
        self._figures, self._meta = [], []
        return steps


def _summary(steps: list[_Step]) -> tuple[int, float, float]:
    """Return (examples, mean loss per example, top-1) over steps."""
    n = sum(s.size for s in steps)
    return n, sum(s.loss * s.size for s in steps) / n, sum(s.correct for s in steps) / n


def _check_finite(
    steps: list[_Step],
    epoch: int,
    explode_grad_norm: float = math.inf,
    explode_loss: float = math.inf,
) -> None:
    """Raise TrainingDiverged at the first step with a non-finite or exploded loss/norm."""
    for s in steps:
        for what, value in (("loss", s.loss), ("gradient norm", s.grad_norm)):
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"{what} became {value} at epoch {epoch} step {s.epoch_step} "
                    f"(global step {s.step}); lower the learning rate or the clip norm",
                    epoch=epoch,
                    step=s.step,
                )
        for what, value, limit in (
            ("gradient norm", s.grad_norm, explode_grad_norm),
            ("loss", s.loss, explode_loss),
        ):
            if value > limit:
                raise TrainingDiverged(
                    f"{what} exploded to {value:.3g} (limit {limit:.3g}) at epoch {epoch} "
                    f"step {s.epoch_step} (global step {s.step}); lower the learning rate",
                    epoch=epoch,
                    step=s.step,
                )


def _optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on weight matrices only (biases are not decayed)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # fused: one kernel for the whole update, and it lets GradScaler skip steps without a sync
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=config.lr, fused=device.type == "cuda"
    )


def _check_first_step(optimizer: torch.optim.AdamW) -> None:
    """Raise TrainingDiverged if Adam's first step size overflows float32 (lr near 3.4e38).

    Adam's step size is largest at step 1, lr / (1 - beta1); past float32's range the CPU
    optimizer fails with a bare RuntimeError and the fused CUDA one writes inf weights.
    """
    limit = torch.finfo(torch.float32).max
    for group in optimizer.param_groups:
        size = group["lr"] / (1 - group["betas"][0])
        if not size < limit:
            raise TrainingDiverged(
                f"Adam's first step lr / (1 - beta1) = {size:.3g} becomes inf in float32 "
                f"(max {limit:.3g}) at epoch 1 step 1 (global step 1); lower the learning rate",
                epoch=1,
                step=1,
            )


@contextmanager
def _deterministic_on_cpu(device: torch.device) -> Iterator[None]:
    """Turn on deterministic algorithms for the run on CPU (free there), then restore."""
    if device.type != "cpu":
        yield
        return
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def _forward_loss(
    model: nn.Module, features: Tensor, lengths: Tensor, labels: Tensor, frame_level: bool
) -> tuple[Tensor, Tensor]:
    """Return clip logits (batch, num_classes + 1) and the training loss."""
    if frame_level:
        frames = model.frame_logits(features, lengths)  # (batch, time, num_classes + 1)
        return masked_mean(frames, lengths), frame_cross_entropy(frames, lengths, labels)
    logits = model(features, lengths)  # (batch, num_classes + 1)
    return logits, F.cross_entropy(logits.float(), labels)


def train(
    model: nn.Module,
    train_loader: BatchLoader,
    val_loader: BatchLoader | None,
    config: TrainConfig,
    on_epoch: Callable[[EpochResult], None] | None = None,
    on_step: Callable[[StepResult], None] | None = None,
) -> TrainResult:
    """Train model in place and return every epoch's figures and the best epoch's weights.

    val_loader None: no validation at all (a refit on train + validation before the test):
    exactly config.epochs epochs, the last epoch's weights are the result, val figures nan,
    patience ignored.
    """
    if len(train_loader) == 0:
        raise ValueError("train: the training loader yields no batches")
    device = torch.device(config.device)
    if config.frame_level != getattr(model, "frame_level", config.frame_level):
        logger.warning(
            "frame-level loss is %s but the model's read-out is %s; validation uses the read-out",
            "on" if config.frame_level else "off",
            "the mean of frames" if model.frame_level else "the last real frame",
        )
    reseed(config.seed)  # dropout's random numbers
    model.to(device)
    optimizer = _optimizer(model, config, device)
    _check_first_step(optimizer)
    on_cuda = device.type == "cuda"
    # Scale fixed at 1: used only to skip steps with non-finite gradients without a sync.
    scaler = (
        torch.amp.GradScaler("cuda", init_scale=1.0, growth_interval=2**30) if on_cuda else None
    )
    use_amp = config.amp and on_cuda
    check_every = config.log_every if on_cuda else 1
    max_norm = config.clip_norm if config.clip_norm > 0 else float("inf")

    history: list[EpochResult] = []
    best: EpochResult | None = None
    stopping = EarlyStopping(config.patience, config.min_loss_gain)
    best_state: dict = {}
    step = 0
    stopped_early = False
    total_examples, total_seconds = 0, 0.0
    with _deterministic_on_cpu(device):
        for epoch in range(1, config.epochs + 1):
            model.train()
            start = time.perf_counter()
            log = _StepLog()
            done: list[_Step] = []  # this epoch's steps, read back
            window_start, window_from = start, 0  # on_step's window: since the last call
            for epoch_step, batch in enumerate(train_loader.epoch(epoch), start=1):
                step += 1
                features = batch.features.to(device, non_blocking=True)  # (batch, time, dim)
                lengths = batch.lengths.to(device, non_blocking=True)  # (batch,)
                labels = batch.labels.to(device, non_blocking=True)  # (batch,)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    logits, loss = _forward_loss(
                        model, features, lengths, labels, config.frame_level
                    )
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm)  # pre-clip norm
                correct = (logits.argmax(dim=1) == labels).sum()
                log.add(step, epoch_step, loss, norm, correct, labels.shape[0])
                report = on_step is not None and step % config.log_every == 0
                if report or epoch_step % check_every == 0:
                    new = log.read()
                    # before the step: never step on garbage
                    _check_finite(new, epoch, config.explode_grad_norm, config.explode_loss)
                    done += new
                if scaler is not None:
                    scaler.step(optimizer)  # skipped on device if any gradient is inf or nan
                    scaler.update()
                else:
                    optimizer.step()
                if report:
                    now = time.perf_counter()
                    size, mean_loss, top1 = _summary(done[window_from:])
                    on_step(
                        StepResult(
                            step=step,
                            epoch=epoch,
                            loss=mean_loss,
                            top1=top1,
                            examples_per_s=size / (now - window_start),
                        )
                    )
                    window_start, window_from = now, len(done)
            new = log.read()
            _check_finite(new, epoch, config.explode_grad_norm, config.explode_loss)
            done += new
            train_seconds = time.perf_counter() - start
            seen, train_loss, train_top1 = _summary(done)
            if val_loader is None:
                val_loss = val_top1 = val_top5 = math.nan
                val_correct = val_clip_loss = None
            else:
                val = evaluate(model, val_loader, device)
                val_loss, val_top1, val_top5 = val.loss, val.top1, val.top5
                val_correct, val_clip_loss = val.correct, val.clip_loss
            result = EpochResult(
                epoch=epoch,
                train_loss=train_loss,
                train_top1=train_top1,
                val_loss=val_loss,
                val_top1=val_top1,
                val_top5=val_top5,
                examples_per_s=seen / train_seconds,
                max_grad_norm=max(s.grad_norm for s in done),
                seconds=time.perf_counter() - start,
                val_correct=val_correct,
                val_clip_loss=val_clip_loss,
            )
            history.append(result)
            total_examples += seen
            total_seconds += train_seconds
            logger.info(
                "epoch %d: train loss %.4f top-1 %.3f | val loss %.4f top-1 %.3f top-5 %.3f | "
                "%.0f examples/s, max grad norm %.3g",
                epoch,
                result.train_loss,
                result.train_top1,
                result.val_loss,
                result.val_top1,
                result.val_top5,
                result.examples_per_s,
                result.max_grad_norm,
            )
            # without validation every epoch is the newest best: the last one is the result
            if val_loader is None or stopping.update(epoch, result.val_top1, result.val_loss):
                best = result
                best_state = {
                    k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
                }
            if on_epoch is not None:
                on_epoch(result)  # may raise (optuna.TrialPruned): it propagates
            if val_loader is not None and epoch < config.epochs and stopping.should_stop(epoch):
                stopped_early = True
                logger.info(
                    "stopping after epoch %d: no validation gain since epoch %d (patience %d)",
                    epoch,
                    stopping.gain_epoch,
                    config.patience,
                )
                break

    assert best is not None  # epochs >= 1
    model.load_state_dict(best_state)
    return TrainResult(
        epochs=history,
        best_epoch=best.epoch,
        best_val_top1=best.val_top1,
        best_state=best_state,
        examples_per_s=total_examples / total_seconds,
        epochs_run=len(history),
        stopped_early=stopped_early,
    )
