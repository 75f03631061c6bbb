"""Score a model on a loader: loss, top-1, top-5, per-class accuracy, confusion, per-clip outcomes.

Scoring is fp32 (no autocast, even where training uses bf16), so what the search sees, the test
score and every confusion matrix are computed the same way.

Also a command: `python -m models.evaluate CHECKPOINT --part test` prints top-1/top-5 and
the worst classes of a checkpoint written by `python -m models.train_cli`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from datasets.batches import BatchLoader


@dataclass(frozen=True)
class Evaluation:
    """A model's figures on one set of clips, over all num_classes + 1 outputs."""

    loss: float  # mean cross entropy per clip
    top1: float
    top5: float
    per_class: np.ndarray  # (num_classes + 1,) accuracy per class id, nan where no clips
    confusion: np.ndarray  # (num_classes + 1, num_classes + 1) int64; row = true, col = predicted
    examples: int
    # Per clip, in the loader's order (fixed when unshuffled): paired tests between models need it.
    correct: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # (examples,)
    clip_loss: np.ndarray = field(  # (examples,) float32 cross entropy
        default_factory=lambda: np.zeros(0, dtype=np.float32)
    )


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: BatchLoader, device: str | torch.device = "cpu"
) -> Evaluation:
    """Return the fp32 Evaluation of model on every clip of loader."""
    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    top1 = torch.zeros((), dtype=torch.int64, device=device)
    top5 = torch.zeros((), dtype=torch.int64, device=device)
    confusion: torch.Tensor | None = None  # (k * k,) counts, flattened for bincount
    correct: list[torch.Tensor] = []  # per batch, (batch,) bool, kept on the device until the end
    clip_loss: list[torch.Tensor] = []  # per batch, (batch,) float32
    examples = 0
    try:
        for batch in loader.epoch(0):
            features = batch.features.to(device, non_blocking=True)  # (batch, time, dim)
            lengths = batch.lengths.to(device, non_blocking=True)  # (batch,)
            labels = batch.labels.to(device, non_blocking=True)  # (batch,)
            # An autocast region opened by a caller (training's bf16) must not reach scoring.
            with torch.autocast(device.type, enabled=False):
                logits = model(features, lengths).float()  # (batch, k), k = num_classes + 1
            k = logits.shape[1]
            losses = F.cross_entropy(logits, labels, reduction="none")  # (batch,)
            loss_sum += losses.sum()
            best = logits.topk(min(5, k), dim=1).indices  # (batch, 5)
            hits = best == labels[:, None]  # (batch, 5)
            correct.append(hits[:, 0])
            clip_loss.append(losses)
            top1 += hits[:, 0].sum()
            top5 += hits.any(dim=1).sum()
            counts = torch.bincount(labels * k + best[:, 0], minlength=k * k)
            confusion = counts if confusion is None else confusion + counts
            examples += labels.shape[0]
    finally:
        model.train(was_training)
    if confusion is None:
        raise ValueError("evaluate: the loader yields no clips")
    matrix = confusion.view(k, k).cpu().numpy().astype(np.int64)
    clips = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(clips > 0, np.diag(matrix) / clips, np.nan)
    return Evaluation(
        loss=loss_sum.item() / examples,
        top1=top1.item() / examples,
        top5=top5.item() / examples,
        per_class=per_class,
        confusion=matrix,
        examples=examples,
        correct=torch.cat(correct).cpu().numpy(),
        clip_loss=torch.cat(clip_loss).cpu().numpy().astype(np.float32),
    )


def worst_classes(ev: Evaluation, n: int) -> list[tuple[int, float, int, int]]:
    """Return up to n (class id, accuracy, correct, clips) with the lowest accuracy, clips > 0."""
    clips = ev.confusion.sum(axis=1)
    ids = [c for c in np.argsort(ev.per_class, kind="stable") if clips[c] > 0][:n]
    return [(int(c), float(ev.per_class[c]), int(ev.confusion[c, c]), int(clips[c])) for c in ids]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: evaluate a checkpoint on one part of the data; returns the exit status."""
    from datasets.device import resolve_device
    from datasets.errors import UserError
    from datasets.loading import DEFAULT_PATTERN, create_loaders, open_split
    from datasets.splits import SplitSpec
    from models.checkpoint import load_checkpoint

    parser = argparse.ArgumentParser(
        prog="python -m models.evaluate",
        description="Print top-1/top-5 and the worst classes of a checkpoint on one part of the "
        "data. Data, split and stride default to what the checkpoint was trained on.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("checkpoint", help="checkpoint file written by python -m models.train_cli")
    parser.add_argument(
        "--data",
        default=None,
        help=f"TFRecord glob (default: the checkpoint's, else {DEFAULT_PATTERN})",
    )
    parser.add_argument(
        "--part",
        choices=("test", "val", "train"),
        default="test",
        help="which part of the split to score",
    )
    parser.add_argument(
        "--split",
        type=int,
        choices=(1, 2, 3),
        default=None,
        help="official split (default: the checkpoint's, else 1)",
    )
    parser.add_argument(
        "--val-groups",
        type=int,
        default=None,
        help="training groups held out for validation (default: the checkpoint's, else 4)",
    )
    parser.add_argument(
        "--stride",
        type=int,
        default=None,
        help="keep every n-th frame (default: the checkpoint's, else 1)",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="clips per batch")
    parser.add_argument(
        "--device", default="auto", help="'auto' (cuda if available), 'cpu' or 'cuda'"
    )
    parser.add_argument("--cache-dir", default="data/cache", help="decoded-feature cache folder")
    parser.add_argument("--worst", type=int, default=10, help="how many worst classes to list")
    args = parser.parse_args(argv)

    try:
        model, spec, extra = load_checkpoint(args.checkpoint, device="cpu")
        trained = extra.get("data", {}) if isinstance(extra.get("data"), dict) else {}
        device = resolve_device(args.device)
        split = open_split(
            args.data or trained.get("pattern", DEFAULT_PATTERN),
            cache_dir=args.cache_dir,
            split=SplitSpec(
                split=args.split or trained.get("split", 1),
                val_groups=args.val_groups
                if args.val_groups is not None
                else trained.get("val_groups", 4),
                seed=trained.get("split_seed", 0),
            ),
            input_dim=spec.input_dim,
        )
        (loader,) = create_loaders(
            split,
            (args.part,),
            batch_size=args.batch_size,
            stride=args.stride or trained.get("stride", 1),
            device=device,
        ).values()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ev = evaluate(model, loader, device)
    data = split.features
    names = dict(zip(data.labels.tolist(), data.texts, strict=True))
    print(
        f"checkpoint: {args.checkpoint} ({spec.kind}"
        + (f" {spec.cell} {spec.layers}x{spec.hidden}" if spec.kind == "rnn" else "")
        + ")"
    )
    print(
        f"{args.part}: {ev.examples} clips  top-1 {ev.top1:.4f}  top-5 {ev.top5:.4f}  "
        f"loss {ev.loss:.4f}"
    )
    print(f"worst {args.worst} classes:")
    for c, acc, hit, n in worst_classes(ev, args.worst):
        print(f"  {c:4d} {names.get(c, '?'):<24} {acc:.3f} ({hit}/{n})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
