"""Synthetic UCF-101: TFRecord shards in the real format whose classes show in the ORDER of events.

The generative model, chosen so that a hyperparameter search over RNNs has something to find:

* A small pool of event prototypes (vectors in feature space). Each class is an ordered
  sequence of 3-4 distinct events that span the clip (random segment lengths, soft borders).
  Classes come in families of FAMILY_SIZE that share one set of events in different orders,
  so the mean of a clip's frames cannot tell the classes of a family apart; a sequence model
  can (bag-of-frames scores clearly below a GRU).
* Clips of one (class, group) share a group look: a fixed offset pattern. A model can memorise
  it, so validating on clips of groups seen in training overstates accuracy, as on UCF-101,
  whose groups are cut from one long video.
* Per-frame noise, per-clip jitter and ReLU (non-negative, like pooled CNN features).
* Lengths like UCF-101 cut at 10 s: ~20% full length, the rest 30-100% of --frames, zero-padded.

Every clip draws from its own seed (seed, class, group, clip), so the bytes depend on the
arguments only, never on --workers.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import multiprocessing
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets import records
from datasets.errors import DataError, UserError
from datasets.records import Clip
from datasets.ucf101 import CLASS_NAMES, NUM_CLASSES, clip_filename

log = logging.getLogger(__name__)

GROUPS = 25
FPS = 25.0
NUM_EVENTS = 10  # prototype pool
FAMILY_SIZE = 4  # classes sharing one set of events, in different orders
SIGNAL_RANK = 16  # events live in a random subspace of this rank: difficulty does not grow with dim
EVENT_DISTANCE = 5.0  # typical distance between two event prototypes
EVENT_NOISE = 1.0  # per-frame noise inside the event subspace, per direction (blurs the events)
NOISE_SCALE = 0.5  # per-frame noise on every feature
BASE_LEVEL = 0.3  # shared positive bias, so features look like pooled CNN activations
LOOK_RANK = 32  # group and clip looks live in another random subspace of this rank
GROUP_SCALE = 1.0  # spread of the per-(class, group) look, per subspace direction
CLIP_SCALE = 0.3  # spread of a per-clip look on top of the group look, per subspace direction
FULL_LENGTH_SHARE = 0.2  # clips at least --frames long (cut at 10 s on UCF-101)
MIN_LENGTH_SHARE = 0.3  # shortest clip, as a share of --frames
DIRICHLET_ALPHA = 4.0  # evenness of the event segments within a clip
SHARD_PREFIX = "synthetic-"


@dataclass(frozen=True)
class Structure:
    """What the classes look like: event prototypes and each class's event order."""

    prototypes: np.ndarray  # (NUM_EVENTS, dim) float32
    event_basis: np.ndarray  # (SIGNAL_RANK, dim) float32, rows of norm ~1
    look_basis: np.ndarray  # (LOOK_RANK, dim) float32, rows of norm ~1
    base: np.ndarray  # (dim,) float32
    orders: tuple[tuple[int, ...], ...]  # event sequence of class id c at orders[c - 1]


def make_structure(seed: int, dim: int) -> Structure:
    """Return the class structure for all 101 classes (the same whatever subset is written)."""
    rng = np.random.default_rng([seed, 0])
    rank = min(SIGNAL_RANK, dim)
    basis = rng.standard_normal((rank, dim), dtype=np.float32) / np.sqrt(dim, dtype=np.float32)
    coeffs = rng.standard_normal((NUM_EVENTS, rank), dtype=np.float32)
    coeffs *= EVENT_DISTANCE / np.sqrt(2.0) / np.linalg.norm(coeffs, axis=1, keepdims=True)
    # Elementwise sums, not a BLAS matmul, so the bytes cannot depend on BLAS threading.
    prototypes = np.zeros((NUM_EVENTS, dim), dtype=np.float32)
    for k in range(rank):
        prototypes += coeffs[:, k, None] * basis[k]
    look_basis = rng.standard_normal((min(LOOK_RANK, dim), dim), dtype=np.float32)
    look_basis /= np.sqrt(dim, dtype=np.float32)
    base = np.full(dim, BASE_LEVEL, dtype=np.float32)
    orders: list[tuple[int, ...]] = []
    used_sets: set[frozenset[int]] = set()
    family = 0
    while len(orders) < NUM_CLASSES:
        size = 3 + family % 2
        events = rng.choice(NUM_EVENTS, size=size, replace=False).tolist()
        if frozenset(events) in used_sets:
            continue
        used_sets.add(frozenset(events))
        perms = list(itertools.permutations(events))
        orders += [perms[i] for i in rng.choice(len(perms), size=FAMILY_SIZE, replace=False)]
        family += 1
    return Structure(
        prototypes=prototypes,
        event_basis=basis,
        look_basis=look_basis,
        base=base,
        orders=tuple(orders[:NUM_CLASSES]),
    )


def _look(structure: Structure, coeffs: np.ndarray) -> np.ndarray:
    out = np.zeros(structure.look_basis.shape[1], dtype=np.float32)
    for k, c in enumerate(coeffs):  # elementwise, not BLAS: bytes independent of threading
        out += c * structure.look_basis[k]
    return out


def group_look(structure: Structure, seed: int, class_id: int, group: int) -> np.ndarray:
    """Return the offset pattern shared by the clips of one (class, group), (dim,) float32."""
    rng = np.random.default_rng([seed, 1, class_id, group])
    rank = structure.look_basis.shape[0]
    return _look(structure, rng.standard_normal(rank, dtype=np.float32) * GROUP_SCALE)


def clip_length(rng: np.random.Generator, frames: int) -> int:
    """Return a real-frame count like UCF-101's first 10 s: some full, most 30-100% of frames."""
    if rng.random() < FULL_LENGTH_SHARE:
        return frames
    return max(1, round(frames * rng.uniform(MIN_LENGTH_SHARE, 1.0)))


def clip_features(
    structure: Structure, seed: int, class_id: int, group: int, clip: int, frames: int
) -> np.ndarray:
    """Return the real frames of one clip, (length, dim) float32, non-negative."""
    rng = np.random.default_rng([seed, 2, class_id, group, clip])
    dim = structure.prototypes.shape[1]
    length = clip_length(rng, frames)
    order = structure.orders[class_id - 1]
    # Event segments: random shares of the clip, soft borders (a box filter over ~4% of it).
    shares = rng.dirichlet(np.full(len(order), DIRICHLET_ALPHA))
    borders = np.round(np.cumsum(shares)[:-1] * length).astype(np.int64)
    which = np.searchsorted(borders, np.arange(length), side="right")  # (length,) event slot
    weights = np.eye(len(order), dtype=np.float32)[which]  # (length, events)
    width = max(1, length // 25)
    if width > 1:
        kernel = np.ones(width, dtype=np.float32) / width
        padded = np.pad(weights, ((width // 2, width - 1 - width // 2), (0, 0)), mode="edge")
        weights = np.stack(
            [np.convolve(padded[:, j], kernel, "valid") for j in range(len(order))], axis=1
        )
    signal = np.zeros((length, dim), dtype=np.float32)
    for j, event in enumerate(order):  # elementwise, not BLAS: bytes independent of threading
        signal += weights[:, j, None] * structure.prototypes[event]
    rank = structure.look_basis.shape[0]
    offset = structure.base + group_look(structure, seed, class_id, group)
    offset += _look(structure, rng.standard_normal(rank, dtype=np.float32) * CLIP_SCALE)
    noise = rng.standard_normal((length, dim), dtype=np.float32) * NOISE_SCALE
    blur = rng.standard_normal((len(structure.event_basis), length), dtype=np.float32)
    for k, row in enumerate(structure.event_basis):
        noise += (blur[k, :, None] * EVENT_NOISE) * row
    return np.maximum(signal + offset + noise, 0.0, dtype=np.float32)


def clip_plan(clips_per_class: int, classes: int) -> list[tuple[int, int, int]]:
    """Return (class id, group, clip) of every clip, clips spread evenly over the 25 groups."""
    per_group = np.diff((np.arange(GROUPS + 1) * clips_per_class) // GROUPS)
    plan = []
    for class_id in range(1, classes + 1):
        for group, count in enumerate(per_group, start=1):
            plan += [(class_id, group, clip) for clip in range(1, int(count) + 1)]
    return plan


def _shard_clips(
    plan: list[tuple[int, int, int]], seed: int, frames: int, dim: int
) -> Iterator[Clip]:
    structure = make_structure(seed, dim)
    for class_id, group, clip in plan:
        name = CLASS_NAMES[class_id - 1]
        yield Clip(
            filename=clip_filename(name, group, clip),
            text=name,
            fps=FPS,
            label=class_id,
            features=clip_features(structure, seed, class_id, group, clip, frames),
        )


def _write_shard(job: tuple[Path, list[tuple[int, int, int]], int, int, int]) -> tuple[int, int]:
    path, plan, seed, frames, dim = job
    size = records.write_clips(path, _shard_clips(plan, seed, frames, dim), pad_to=frames)
    return size, len(plan)


def write_synthetic(
    out_dir: str | Path,
    *,
    clips_per_class: int,
    frames: int,
    dim: int,
    classes: int,
    seed: int,
    shard_size: int = 200,
    workers: int = 2,
) -> list[Path]:
    """Write synthetic UCF-101 shards into out_dir; return their paths in order."""
    if not 1 <= classes <= NUM_CLASSES:
        raise DataError(
            f"classes must be 1..{NUM_CLASSES} (the first K UCF-101 classes), got {classes}"
        )
    for name, value in (
        ("clips_per_class", clips_per_class),
        ("frames", frames),
        ("dim", dim),
        ("shard_size", shard_size),
        ("workers", workers),
    ):
        if value < 1:
            raise DataError(f"{name} must be >= 1, got {value}")
    if seed < 0:
        raise DataError(f"seed must be >= 0, got {seed}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = clip_plan(clips_per_class, classes)
    chunks = [plan[i : i + shard_size] for i in range(0, len(plan), shard_size)]
    paths = [
        out / f"{SHARD_PREFIX}{i:05d}-of-{len(chunks):05d}.tfrecord" for i in range(len(chunks))
    ]
    # Shards of an earlier run with other arguments would mix into the same glob.
    for old in out.glob(f"{SHARD_PREFIX}*-of-*.tfrecord"):
        if old not in paths:
            log.info("removing %s from an earlier synthetic run", old)
            old.unlink()
    jobs = [(p, chunk, seed, frames, dim) for p, chunk in zip(paths, chunks, strict=True)]
    if workers == 1 or len(jobs) == 1:
        for job in jobs:
            _write_shard(job)
    else:
        # spawn: safe when the caller runs threads (torch, a study's trials), unlike fork; the
        # executor (unlike multiprocessing.Pool) raises instead of hanging when a worker dies.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx) as pool:
            for _ in pool.map(_write_shard, jobs):
                pass
    return paths


def main(argv: list[str] | None = None) -> int:
    """Write synthetic shards from the command line; print the speed."""
    parser = argparse.ArgumentParser(
        description="Write synthetic UCF-101-like TFRecord shards (real class names, 25 groups, "
        "order-dependent classes, per-group looks).",
    )
    parser.add_argument("--out", required=True, help="folder for the shards (required)")
    parser.add_argument(
        "--clips-per-class",
        type=int,
        default=25,
        help="clips per class, spread over the 25 groups (default 25)",
    )
    parser.add_argument(
        "--frames",
        type=int,
        default=250,
        help="frames per record; shorter clips are zero-padded (default 250)",
    )
    parser.add_argument("--dim", type=int, default=2048, help="feature size (default 2048)")
    parser.add_argument(
        "--classes",
        type=int,
        default=NUM_CLASSES,
        help=f"use the first K UCF-101 classes (default {NUM_CLASSES})",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--shard-size", type=int, default=200, help="clips per shard (default 200)")
    parser.add_argument(
        "--workers", type=int, default=2, help="processes writing shards in parallel (default 2)"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        paths = write_synthetic(
            args.out,
            clips_per_class=args.clips_per_class,
            frames=args.frames,
            dim=args.dim,
            classes=args.classes,
            seed=args.seed,
            shard_size=args.shard_size,
            workers=args.workers,
        )
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in paths)
    clips = args.clips_per_class * args.classes
    print(
        f"wrote {clips} clips in {len(paths)} shards ({size / 1e6:.1f} MB) to {args.out} in "
        f"{seconds:.1f} s: {size / 1e6 / seconds:.1f} MB/s, {clips / seconds:.1f} clips/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
