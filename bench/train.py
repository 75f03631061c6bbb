"""Training throughput of models.training.train against a naive first-port loop, same run.

    python bench/train.py [--device auto] [--clips N] [--repeats N] [--batch-size 256] [--json F]

Every variant trains whole epochs over the same clips (all --clips of them, each once per
epoch), so the length mix of each timed epoch is the data's, not that of whichever batches were
drawn. The variants take turns within each repeat (the order rotates), so a load that drifts
hits all alike; the median over repeats is the figure and the min-max range its spread. On a
2-core CPU `--clips 128 --batch-size 64 --repeats 3` takes about a minute and a half.

The original's default configuration: GRU, 2 layers x 256 units, batch 256, clips of up to
250 frames of 2048-d features, Adam lr 1e-3, gradient clipping at 1.0. Random data whose
lengths spread like UCF-101 cut at 10 s (datasets.synthetic.clip_length: ~20% full length,
the rest 30-100% of 250 frames).

- naive: what a first PyTorch port writes: every clip zero-padded to 250 frames and stored
  float64 (as parsed), converted to float32 per batch, fp32 maths, read-out at step 250,
  `.item()` on loss and accuracy every step.
- ours: models.training.train over datasets.batches.BatchLoader: fp16 storage (resident on
  the GPU when it fits), batches trimmed to their longest clip, read-out at each clip's last
  real frame, bf16 autocast on CUDA, no per-step sync on CUDA.
- ours + bucketing: the same with BatchLoader(bucket=True): clips of similar length share a
  batch, so trimming removes most padding.

Examples/s count training steps with their data loading; validation is excluded. Each variant
first trains one untimed warm-up epoch. Prints the device, each variant's median examples/s with
its range, and its ratio to naive (the median of the per-repeat ratios, with their range).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datasets.batches import BatchLoader, epoch_batches
from datasets.cache import FeatureSet
from datasets.synthetic import clip_length
from models.rnn import ModelSpec, build_model
from models.training import TrainConfig, train

FRAMES, DIM, HIDDEN, CLASSES = 250, 2048, 256, 101
LAYERS, LR, CLIP = 2, 1e-3, 1.0
VARIANTS = ("naive", "ours", "bucketed")


@dataclass(frozen=True)
class Shape:
    """The sizes one run trains at (the default configuration's; toy sizes for a dry run)."""

    frames: int = FRAMES
    dim: int = DIM
    hidden: int = HIDDEN
    batch: int = 256


def make_features(clips: int, shape: Shape, seed: int) -> FeatureSet:
    """Random fp16 clips with UCF-101-like lengths, in memory."""
    rng = np.random.default_rng(seed)
    lengths = np.array([clip_length(rng, shape.frames) for _ in range(clips)], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    frames = rng.standard_normal((int(offsets[-1]), shape.dim), dtype=np.float32)
    labels = rng.integers(1, CLASSES + 1, size=clips)
    names = tuple(f"v_Bench_g{i % 25 + 1:02d}_c{i:02d}.avi" for i in range(clips))
    return FeatureSet(
        frames=frames.astype(np.float16),
        offsets=offsets,
        labels=labels,
        filenames=names,
        texts=("Bench",) * clips,
        fps=25.0,
        fingerprint="bench",
    )


class NaiveGRU(nn.Module):
    """The first port's model: read-out at the last step of the zero-padded sequence."""

    def __init__(self, shape: Shape) -> None:
        super().__init__()
        self.rnn = nn.GRU(shape.dim, shape.hidden, num_layers=LAYERS, batch_first=True)
        self.head = nn.Linear(shape.hidden, CLASSES + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)  # (batch, frames, hidden)
        return self.head(out[:, -1])


class Naive:
    """The first port's training loop over every clip, padded and stored float64."""

    def __init__(self, data: FeatureSet, shape: Shape, device: str) -> None:
        clips = len(data)
        self.padded = np.zeros((clips, shape.frames, shape.dim), dtype=np.float64)
        for i in range(clips):  # (clips, frames, dim)
            self.padded[i, : data.lengths[i]] = data.frames[data.offsets[i] : data.offsets[i + 1]]
        self.labels = data.labels
        self.batch, self.device = shape.batch, device
        torch.manual_seed(0)
        self.model = NaiveGRU(shape).to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR)

    def epoch(self, epoch: int) -> tuple[int, float]:
        """Train one epoch over every clip; return (examples, seconds)."""
        start = time.perf_counter()
        total_loss = total_acc = 0.0
        for clips in epoch_batches(
            np.arange(len(self.labels)), self.batch, shuffle=True, seed=0, epoch=epoch
        ):
            x = torch.from_numpy(self.padded[clips]).float().to(self.device)  # fp64 -> fp32
            y = torch.from_numpy(self.labels[clips]).to(self.device)
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
            self.opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
            self.opt.step()
            total_loss += loss.item()  # a sync every step on CUDA
            total_acc += (logits.argmax(1) == y).float().mean().item()
        return len(self.labels), time.perf_counter() - start


class Ours:
    """models.training.train, one epoch per call, over a BatchLoader kept between calls."""

    def __init__(self, data: FeatureSet, shape: Shape, device: str, bucket: bool) -> None:
        spec = ModelSpec(
            kind="rnn",
            input_dim=shape.dim,
            num_classes=CLASSES,
            cell="gru",
            hidden=shape.hidden,
            layers=LAYERS,
        )
        self.config = TrainConfig(lr=LR, clip_norm=CLIP, epochs=1, device=device)
        torch.manual_seed(0)
        self.model = build_model(spec)
        self.loader = BatchLoader(
            data,
            np.arange(len(data)),
            shape.batch,
            shuffle=True,
            seed=0,
            bucket=bucket,
            device=device,
        )
        self.val = BatchLoader(data, np.arange(min(8, len(data))), 8, device=device)  # untimed

    def epoch(self, epoch: int) -> tuple[int, float]:
        """Train one epoch over every clip; return (examples, training seconds)."""
        # train() numbers its epochs from 1: every call trains the loader's epoch-1 batches.
        result = train(self.model, self.loader, self.val, self.config)
        return self.loader.num_examples, self.loader.num_examples / result.examples_per_s


def measure(runners: dict, repeats: int, sync) -> dict[str, list[float]]:
    """Return examples/s per variant per repeat; the variants take turns, order rotating."""
    for runner in runners.values():  # warm-up: allocations, cuDNN plans, page faults
        runner.epoch(0)
    sync()
    speeds: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            examples, seconds = runners[name].epoch(r + 1)
            sync()
            speeds[name].append(examples / seconds)
    return speeds


def summarise(speeds: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Return per variant: median, min and max examples/s and the per-repeat ratio to naive."""
    out = {}
    for name, values in speeds.items():
        ratios = [v / n for v, n in zip(values, speeds["naive"], strict=True)]
        out[name] = {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
        }
    return out


def build_parser() -> argparse.ArgumentParser:
    """Return the benchmark's flags."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--device", default="auto", help="'auto' (cuda if available), cpu or cuda")
    p.add_argument(
        "--clips",
        type=int,
        default=None,
        help="clips per epoch, the same for every variant (default: 2048 on CUDA, 128 on CPU)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed epochs per variant, taken in turns (default: 7 on CUDA, 3 on CPU)",
    )
    p.add_argument("--batch-size", type=int, default=256, help="clips per batch")
    p.add_argument("--frames", type=int, default=FRAMES, help="frames per clip at most")
    p.add_argument("--dim", type=int, default=DIM, help="features per frame")
    p.add_argument("--hidden", type=int, default=HIDDEN, help="GRU units per layer")
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)"
    )
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print its figures; return the exit code."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: no CUDA GPU is visible here; use --device cpu")
    on_cuda = device.startswith("cuda")
    clips = args.clips or (2048 if on_cuda else 128)
    repeats = args.repeats or (7 if on_cuda else 3)
    shape = Shape(frames=args.frames, dim=args.dim, hidden=args.hidden, batch=args.batch_size)
    data = make_features(clips, shape, seed=0)
    print(f"device: {device} ({device_name(device)}), torch {torch.__version__}")
    print(
        f"config: GRU {LAYERS}x{shape.hidden}, batch {shape.batch}, up to {shape.frames} "
        f"frames (mean {data.lengths.mean():.0f}), {shape.dim}-d, Adam lr {LR}, clip {CLIP}; "
        f"{repeats} timed epochs of {clips} clips per variant, in turns, after 1 warm-up epoch"
    )
    runners = {
        "naive": Naive(data, shape, device),
        "ours": Ours(data, shape, device, bucket=False),
        "bucketed": Ours(data, shape, device, bucket=True),
    }
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    figures = summarise(measure(runners, repeats, sync))
    labels = {
        "naive": f"naive (fp32, padded to {shape.frames}, read-out at the last step, .item() "
        "per step, fp64->fp32 per batch)",
        "ours": f"ours (train() + BatchLoader, trimmed batches{', bf16' if on_cuda else ''})",
        "bucketed": "ours + length bucketing (BatchLoader(bucket=True))",
    }
    for name in VARIANTS:
        f = figures[name]
        print(
            f"{labels[name]}: {f['median']:.1f} examples/s (range {f['min']:.1f}-"
            f"{f['max']:.1f}), {f['ratio_median']:.2f}x naive (range {f['ratio_min']:.2f}-"
            f"{f['ratio_max']:.2f}x)"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "device": device,
                    "device_name": device_name(device),
                    "torch": torch.__version__,
                    "clips": clips,
                    "repeats": repeats,
                    "shape": vars(args) | {"device": device},
                    "examples_per_s": figures,
                },
                indent=2,
            )
        )
    return 0


def device_name(device: str) -> str:
    """Return the GPU's name, or the CPU model and thread count."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    model = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, torch threads: {torch.get_num_threads()}"


if __name__ == "__main__":
    sys.exit(main())
