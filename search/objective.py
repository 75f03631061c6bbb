"""One trial: suggest, build, train with per-epoch reports and pruning, record what happened."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from datasets.batches import BatchLoader
from datasets.loading import create_loaders
from models.evaluate import evaluate
from models.rnn import ModelSpec, build_model
from models.seeding import seeded
from models.training import (
    EpochResult,
    StepResult,
    TrainConfig,
    TrainingDiverged,
    TrainResult,
    train,
)
from search.artifacts import attach_best_artifacts, render_confusion_png
from search.best_checkpoint import BestCheckpoint
from search.clip_outcomes import CLASSES_KEY, STEPS_KEY, outcome_attrs
from search.definition import StudyDefinition
from search.errors import TrialFailed, TrialInterrupted
from search.manifest import manifest, trial_seed
from search.pruning import explain_prune
from search.space import suggest
from search.study_data import StudyData
from search.tracking import TrackingConfig, TrialRun


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of one run shares: the definition and the run's fixed choices."""

    definition: StudyDefinition
    data: StudyData
    device: str
    seed: int
    epochs: int  # a trial's epoch budget; its pruner (NopPruner with --no-prune) is the study's
    tracking: TrackingConfig
    checkpoint: BestCheckpoint  # keeps the weights of the study's best trial so far
    artifact_dir: Path  # Optuna's artifact store, served by optuna-dashboard --artifact-dir
    # On CUDA each trial computes on a stream of its own (--jobs N trials overlap on one GPU);
    # False runs every trial on the default stream (tests compare the two).
    trial_streams: bool = True


def model_spec(params: dict[str, Any], settings: TrialSettings) -> ModelSpec:
    """Return the network a trial's params describe."""
    return ModelSpec(
        kind="rnn",
        input_dim=settings.data.features.feature_dim,
        num_classes=settings.data.num_classes,
        cell=params["cell"],
        hidden=int(params["hidden"]),
        layers=int(params["layers"]),
        dropout=float(params.get("dropout", 0.0)),
        frame_level=settings.definition.train.frame_level,
    )


def train_config(params: dict[str, Any], settings: TrialSettings, seed: int) -> TrainConfig:
    """Return the training settings a trial's params describe."""
    return TrainConfig(
        lr=float(params["lr"]),
        clip_norm=float(params["clip_norm"]),
        weight_decay=float(params.get("weight_decay", 0.0)),
        epochs=settings.epochs,
        patience=settings.definition.train.patience,
        min_loss_gain=settings.definition.train.min_loss_gain,
        seed=seed,
        device=settings.device,
        frame_level=settings.definition.train.frame_level,
        explode_grad_norm=settings.definition.train.explode_grad_norm,
        explode_loss=settings.definition.train.explode_loss,
    )


def loaders(
    params: dict[str, Any], settings: TrialSettings, seed: int, parts: tuple[str, ...]
) -> list[BatchLoader]:
    """Return one batch loader per split part, in the order asked; training shuffles and buckets."""
    made = create_loaders(
        settings.data,
        parts,
        batch_size=int(params.get("batch_size", 64)),
        stride=int(params.get("stride", 1)),
        seed=seed,
        device=settings.device,
        bucket=True,
    )
    return [made[part] for part in parts]


def train_alone(
    params: dict[str, Any], settings: TrialSettings, seed: int
) -> tuple[torch.nn.Module, TrainResult]:
    """Return a configuration's model and result, trained as its trial is, outside any study.

    Same seed, builders and stopping rule as the objective, no pruning: the model then holds
    the best epoch's weights (a missing best checkpoint, a pruned trial's audit re-run).
    """
    with seeded(seed):
        model = build_model(model_spec(params, settings))
    train_loader, val_loader = loaders(params, settings, seed, ("train", "val"))
    return model, train(model, train_loader, val_loader, train_config(params, settings, seed))


def objective(trial: optuna.Trial, settings: TrialSettings, stop: threading.Event) -> float:
    """Train one configuration; return its best validation top-1 accuracy."""
    started = time.perf_counter()
    for inherited in ("fail_reason", "prune_reason"):  # a retried trial copies its original's
        if inherited in trial.user_attrs:
            trial.set_user_attr(inherited, None)
    params = suggest(trial, settings.definition)
    seed = trial_seed(settings.seed, trial.number)
    fingerprint = settings.data.features.fingerprint
    trial.set_user_attr("manifest", manifest(seed, fingerprint, settings.device))
    run_config = {
        **params,
        "epochs_budget": settings.epochs,
        "patience": settings.definition.train.patience,
        "min_loss_gain": settings.definition.train.min_loss_gain,
        "data_fingerprint": fingerprint,
        "data": settings.data.pattern,
        "split": settings.definition.data.split,
        "device": settings.device,
        "seed": seed,
        "study_seed": settings.seed,
        "frame_level": settings.definition.train.frame_level,
        "trial_number": trial.number,
    }
    # The W&B run opens first, so that whatever goes wrong from here on is recorded in it.
    with (
        TrialRun(settings.tracking, trial.number, run_config) as run,
        _own_stream(settings.device, settings.trial_streams),
        _out_of_memory_fails(trial, run, settings.device),
    ):
        trial.set_user_attr("wandb_run", run.path)
        spec = model_spec(params, settings)
        with seeded(seed):
            model = build_model(spec)
        train_loader, val_loader = loaders(params, settings, seed, ("train", "val"))
        trial.set_user_attr("param_count", sum(p.numel() for p in model.parameters()))

        def on_step(step: StepResult) -> None:
            if stop.is_set():
                raise TrialInterrupted(f"interrupted at epoch {step.epoch} step {step.step}")
            run.log_step(
                {
                    "train/loss": step.loss,
                    "train/top1": step.top1,
                    "train/examples_per_s": step.examples_per_s,
                    "epoch": step.epoch,
                },
                step=step.step,
            )

        best_so_far = float("-inf")

        def on_epoch(result: EpochResult) -> None:
            nonlocal best_so_far
            best_so_far = max(best_so_far, result.val_top1)
            # Per-clip outcomes before the report: a pruner anywhere pairs them clip by clip.
            if result.epoch == 1:  # chance for the pruner: the classes validation really holds
                val_labels = settings.data.features.labels[settings.data.parts["val"]]
                trial.set_user_attr(CLASSES_KEY, len(np.unique(val_labels)))
                trial.set_user_attr(STEPS_KEY, len(train_loader))  # to pair trials by steps
            if result.val_correct is not None and result.val_clip_loss is not None:
                for key, value in outcome_attrs(
                    result.epoch, result.val_correct, result.val_clip_loss
                ).items():
                    trial.set_user_attr(key, value)
            trial.report(result.val_top1, result.epoch)
            trial.set_user_attr("epochs_run", result.epoch)
            run.log_epoch(result.epoch, _epoch_metrics(result))
            if stop.is_set():
                raise TrialInterrupted(f"interrupted after epoch {result.epoch}")
            # A trial that has trained its whole budget is complete: pruning it saves nothing.
            if result.epoch < settings.epochs and trial.should_prune():
                reason = explain_prune(trial, result.epoch, best_so_far)
                trial.set_user_attr("prune_reason", reason)
                run.finish(
                    "pruned",
                    {
                        "pruned_epoch": result.epoch,
                        "best_val_top1": best_so_far,
                        **_prefixed(reason),
                    },
                )
                raise optuna.TrialPruned(reason["text"])

        def finish_as(state: str, summary: dict[str, Any]) -> None:
            trial.set_user_attr("wall_s", round(time.perf_counter() - started, 3))
            run.finish(state, summary)

        try:
            result = train(
                model,
                train_loader,
                val_loader,
                train_config(params, settings, seed),
                on_epoch=on_epoch,
                on_step=on_step,
            )
        except TrainingDiverged as exc:
            reason = {"epoch": exc.epoch, "text": exc.reason}
            trial.set_user_attr("prune_reason", reason)
            scored = {"best_val_top1": best_so_far} if best_so_far > float("-inf") else {}
            finish_as("pruned", {"pruned_epoch": exc.epoch, "prune/text": exc.reason, **scored})
            raise optuna.TrialPruned(exc.reason) from None
        except optuna.TrialPruned:
            trial.set_user_attr("wall_s", round(time.perf_counter() - started, 3))
            raise
        trial.set_user_attr("examples_per_s", round(result.examples_per_s, 1))
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("epochs_run", result.epochs_run)
        trial.set_user_attr("stopped_early", result.stopped_early)
        # train() has left the best epoch's weights in the model.
        if settings.checkpoint.offer(trial.study, trial.number, result.best_val_top1, model, spec):
            _attach_artifacts(trial, model, val_loader, settings)
        finish_as(
            "complete", {"best_val_top1": result.best_val_top1, "best_epoch": result.best_epoch}
        )
    return result.best_val_top1


def _own_stream(device: str, enabled: bool = True) -> contextlib.AbstractContextManager:
    """Return a context that runs the trial on a CUDA stream of its own (nothing on the CPU)."""
    # Trials of --jobs N then overlap on one GPU instead of queueing on the default stream.
    # Everything the trial reads is made on this stream or ordered before it: datasets.batches
    # issues every host->device copy on the consumer's current stream (this one) and publishes
    # the shared resident copy only once it is complete (the stream rule, in BatchLoader.epoch).
    if not enabled or not device.startswith("cuda"):
        return contextlib.nullcontext()
    return torch.cuda.stream(torch.cuda.Stream(device=device))


@contextlib.contextmanager
def _out_of_memory_fails(trial: optuna.Trial, run: TrialRun, device: str) -> Iterator[None]:
    """Turn a CUDA out-of-memory anywhere in the trial into TrialFailed, naming the reason.

    Model build, .to(device), training, evaluation and checkpointing all run inside. The other
    trials of --jobs N go on; the failed trial's cached blocks are handed back to the driver.
    """
    try:
        yield
    except torch.cuda.OutOfMemoryError as exc:
        reason = f"CUDA out of memory: {str(exc).splitlines()[0]}"
    else:
        return
    # Outside the except block, so the traceback (and the tensors its frames hold) is released.
    trial.set_user_attr("fail_reason", reason)
    run.finish("failed", {"fail_reason": reason})
    if device.startswith("cuda") and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    raise TrialFailed(reason)


def _attach_artifacts(
    trial: optuna.Trial, model: torch.nn.Module, val_loader: BatchLoader, settings: TrialSettings
) -> None:
    """Attach a new best trial's checkpoint and validation confusion matrix to the trial.

    Done while the trial runs: Optuna takes no artifacts on a finished trial.
    """
    confusion = evaluate(model, val_loader, device=settings.device).confusion
    png = settings.artifact_dir.parent / f"trial-{trial.number}-val-confusion.png"
    render_confusion_png(confusion, settings.data.class_names, png)
    attach_best_artifacts(
        trial.study, trial, [png, settings.checkpoint.path], settings.artifact_dir
    )


def _epoch_metrics(r: EpochResult) -> dict[str, float]:
    return {
        "val/loss": r.val_loss,
        "val/top1": r.val_top1,
        "val/top5": r.val_top5,
        "train/epoch_loss": r.train_loss,
        "train/epoch_top1": r.train_top1,
        "train/epoch_examples_per_s": r.examples_per_s,
        "train/max_grad_norm": r.max_grad_norm,
        "epoch_seconds": r.seconds,
    }


def _prefixed(reason: dict[str, Any]) -> dict[str, Any]:
    return {f"prune/{k}": v for k, v in reason.items()}
