"""The command line of `python -m datasets.extract`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from datasets.errors import UserError
from datasets.extract.encoder import MODELS
from datasets.extract.resume import skipped_path
from datasets.extract.run import ExtractConfig, extract


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, as for every other user error
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of `python -m datasets.extract`."""
    p = _Parser(
        prog="python -m datasets.extract",
        description="Extract per-frame ImageNet CNN features from UCF-101 videos into "
        "TFRecord SequenceExample shards (resumable: re-run the same command to continue).",
    )
    p.add_argument(
        "--videos",
        type=Path,
        required=True,
        help="folder of videos: UCF-101/<Class>/v_<Class>_gGG_cCC.avi, or flat",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="folder for the shards, e.g. data/ucf101/"
    )
    p.add_argument(
        "--splits",
        type=Path,
        default=None,
        help="ucfTrainTestlist/ folder; labels then come from its classInd.txt "
        "(default: the official 101-class order built in)",
    )
    p.add_argument(
        "--model",
        default="resnet50",
        choices=MODELS,
        help="torchvision ImageNet CNN (default: resnet50, 2048-d features)",
    )
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="weights .pth file (default: torchvision's file in the torch hub cache; "
        "never downloaded)",
    )
    p.add_argument(
        "--random-init",
        action="store_true",
        help="random weights, FOR TESTS AND BENCHMARKS ONLY: the features are noise",
    )
    p.add_argument("--fps", type=float, default=25.0, help="frames per second taken (default: 25)")
    p.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help="seconds taken from the start of each video; records are padded to "
        "seconds * fps frames (default: 10)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=224,
        help="shorter side resized to this, then centre-cropped square (default: 224)",
    )
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="frames per CNN batch (default: 256 on CUDA, 32 on CPU)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="decoding processes, 0 = decode in this process (default: CPU cores - 1, at most 16)",
    )
    p.add_argument("--shard-size", type=int, default=200, help="videos per shard (default: 200)")
    return p


def config_from_args(args: argparse.Namespace) -> ExtractConfig:
    """Return the ExtractConfig the parsed flags describe."""
    return ExtractConfig(
        videos=args.videos,
        out=args.out,
        splits=args.splits,
        model=args.model,
        weights=args.weights,
        random_init=args.random_init,
        fps=args.fps,
        seconds=args.seconds,
        image_size=args.image_size,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        shard_size=args.shard_size,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (2 on errors a user can fix)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a bad flag (2, one line already printed)
        return int(exit_.code or 0)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    cfg = config_from_args(args)
    loud = (
        f"WARNING: --random-init: {cfg.model} has RANDOM weights; these features are noise, "
        "for tests and benchmarks only, never for training a classifier"
    )
    if cfg.random_init:
        print(loud, file=sys.stderr)
    try:
        # Log lines (skipped videos) go above the progress bar instead of through it.
        with logging_redirect_tqdm():
            result = extract(cfg, progress=True)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: finished shards are kept; re-run the same command to resume",
            file=sys.stderr,
        )
        return 130
    rate = result.frames / result.seconds if result.seconds else 0.0
    print(
        f"{cfg.out}: {result.shards_written} shards written, {result.shards_resumed} already done "
        f"(of {result.shards_total}); {result.clips_written} clips, {result.frames} frames "
        f"({rate:.0f} frames/s) of {result.feature_dim}-d {cfg.model} features, "
        f"weights {result.weights}, on {result.device}"
    )
    if result.skipped:
        print(f"{len(result.skipped)} videos skipped (listed in {skipped_path(cfg.out)}):")
        for s in result.skipped:
            print(f"  {s.filename}: {s.reason}")
    if cfg.random_init:
        print(loud, file=sys.stderr)
    return 0
