"""Command line: one training run from flags, then val/test scores and a checkpoint.

The training loop itself is models.training.train; this module only turns flags into its
arguments and prints what it returns.

    python -m models.train_cli --cell gru --layers 2 --hidden 256 --epochs 10 --out runs/gru.pt
    python -m models.evaluate runs/gru.pt --part test
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence

import torch
from tqdm import tqdm

from datasets.device import resolve_device
from datasets.errors import UserError
from datasets.loading import DEFAULT_PATTERN, DEMO_COMMAND, create_loaders, open_split
from datasets.splits import SplitSpec
from datasets.ucf101 import NUM_CLASSES
from models.checkpoint import save_checkpoint
from models.evaluate import Evaluation, evaluate
from models.rnn import ModelSpec, build_model
from models.training import EpochResult, StepResult, TrainConfig, TrainingDiverged, train


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Return the parsed flags; every flag's help shows its default."""
    p = argparse.ArgumentParser(
        prog="python -m models.train_cli",
        description="Train one LSTM/GRU (or bag-of-frames) classifier on UCF-101 frame "
        "features, print validation and test top-1/top-5, and save a checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--data",
        default=DEFAULT_PATTERN,
        help=f"TFRecord glob (quote it); demo data: {DEMO_COMMAND}",
    )
    p.add_argument("--cache-dir", default="data/cache", help="decoded-feature cache folder")
    p.add_argument(
        "--model",
        choices=("rnn", "bag"),
        default="rnn",
        help="recurrent classifier, or the order-blind bag-of-frames baseline",
    )
    p.add_argument("--cell", choices=("gru", "lstm"), default="gru", help="recurrent cell")
    p.add_argument("--layers", type=int, default=2, help="stacked recurrent layers")
    p.add_argument("--hidden", type=int, default=256, help="units per recurrent layer")
    p.add_argument(
        "--dropout",
        type=float,
        default=0.0,
        help="dropout between recurrent layers and before the classifier",
    )
    p.add_argument(
        "--frame-level",
        action="store_true",
        help="loss on every real frame; clip prediction = mean of frame logits",
    )
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument(
        "--clip-norm", type=float, default=1.0, help="max global gradient norm (0 = no clipping)"
    )
    p.add_argument(
        "--weight-decay",
        type=float,
        default=0.0,
        help="decoupled (AdamW) weight decay on weight matrices",
    )
    p.add_argument("--batch-size", type=int, default=256, help="clips per batch")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training part")
    p.add_argument("--stride", type=int, default=1, help="keep every n-th frame")
    p.add_argument(
        "--bucket",
        action="store_true",
        help="group training clips of similar length into batches (less padding)",
    )
    p.add_argument(
        "--split",
        type=int,
        choices=(1, 2, 3),
        default=1,
        help="official UCF-101 split (its test groups are scored once, at the end)",
    )
    p.add_argument(
        "--val-groups", type=int, default=4, help="training groups held out for validation"
    )
    p.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu' or 'cuda'")
    p.add_argument(
        "--no-amp",
        dest="amp",
        action="store_false",
        help="train in fp32 on CUDA instead of bf16 autocast (autocast on: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for weights, shuffling and dropout")
    p.add_argument("--log-every", type=int, default=10, help="steps between progress updates")
    p.add_argument("--out", default="checkpoints/model.pt", help="checkpoint path to write")
    return p.parse_args(argv)


def _scores(ev: Evaluation) -> dict:
    return {"top1": ev.top1, "top5": ev.top5, "loss": ev.loss, "clips": ev.examples}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one training from the command line; return the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        device = resolve_device(args.device)
        split = open_split(
            args.data,
            cache_dir=args.cache_dir,
            split=SplitSpec(split=args.split, val_groups=args.val_groups),
        )
        loaders = create_loaders(
            split,
            ("train", "val", "test"),
            batch_size=args.batch_size,
            stride=args.stride,
            seed=args.seed,
            device=device,
            bucket=args.bucket,
        )
        data = split.features
        try:  # these classes check their arguments; here every argument is a flag's value
            spec = ModelSpec(
                kind=args.model,
                input_dim=data.feature_dim,
                num_classes=NUM_CLASSES,
                cell=args.cell,
                hidden=args.hidden,
                layers=args.layers,
                dropout=args.dropout,
                frame_level=args.frame_level,
            )
            config = TrainConfig(
                lr=args.lr,
                clip_norm=args.clip_norm,
                weight_decay=args.weight_decay,
                epochs=args.epochs,
                seed=args.seed,
                device=device,
                amp=args.amp,
                frame_level=args.frame_level,
                log_every=args.log_every,
            )
        except ValueError as e:
            raise UserError(str(e)) from None
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"data: {args.data}: {len(data)} clips, {data.feature_dim}-d; "
        + ", ".join(f"{k} {v.num_examples}" for k, v in loaders.items())
        + f"; device {device}"
    )

    torch.manual_seed(args.seed)  # weight initialisation
    model = build_model(spec)
    steps_per_epoch = len(loaders["train"])
    bar = tqdm(total=args.epochs * steps_per_epoch, unit="batch", dynamic_ncols=True)

    def on_step(s: StepResult) -> None:
        bar.update(s.step - bar.n)
        bar.set_postfix(
            epoch=s.epoch, loss=f"{s.loss:.3f}", acc=f"{s.top1:.3f}", ex_s=f"{s.examples_per_s:.0f}"
        )

    def on_epoch(r: EpochResult) -> None:
        bar.update(r.epoch * steps_per_epoch - bar.n)
        bar.write(
            f"epoch {r.epoch}: train loss {r.train_loss:.4f} acc {r.train_top1:.3f} | "
            f"val loss {r.val_loss:.4f} top-1 {r.val_top1:.3f} top-5 {r.val_top5:.3f} | "
            f"{r.examples_per_s:.0f} ex/s, max grad norm {r.max_grad_norm:.3g}"
        )

    try:
        result = train(model, loaders["train"], loaders["val"], config, on_epoch, on_step)
    except TrainingDiverged as e:
        bar.close()
        print(f"error: training diverged: {e.reason}", file=sys.stderr)
        return 1
    except UserError as e:  # a shard that changed or broke under a running loader
        bar.close()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        bar.close()
        print("interrupted: no checkpoint written", file=sys.stderr)
        return 130
    bar.close()

    # train() leaves the best epoch's weights in the model
    val = evaluate(model, loaders["val"], device)
    test = evaluate(model, loaders["test"], device)
    print(
        f"best epoch {result.best_epoch} of {len(result.epochs)}, "
        f"{result.examples_per_s:.0f} training examples/s"
    )
    print(f"val:  top-1 {val.top1:.4f}  top-5 {val.top5:.4f}  ({val.examples} clips)")
    print(f"test: top-1 {test.top1:.4f}  top-5 {test.top5:.4f}  ({test.examples} clips)")
    save_checkpoint(
        args.out,
        model,
        spec,
        extra={
            "data": {
                "pattern": args.data,
                "fingerprint": data.fingerprint,
                "split": args.split,
                "val_groups": args.val_groups,
                "split_seed": 0,
                "stride": args.stride,
            },
            "train": dataclasses.asdict(config),
            "best_epoch": result.best_epoch,
            "epochs": [dataclasses.asdict(r) for r in result.epochs],
            "scores": {"val": _scores(val), "test": _scores(test)},
        },
    )
    print(f"checkpoint: {args.out}  (score it: python -m models.evaluate {args.out} --part test)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
