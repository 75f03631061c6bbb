"""Training throughput of models.training.train against a naive first-port loop, same run.

    python bench/train.py [--device auto] [--steps N] [--rounds N] [--batch-size 256] [--threads N]

On a CPU it takes about 2 minutes (2 steps per variant; `--threads 1` on a shared, busy box).

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

Examples/s count training steps with their data loading, after one warm-up step; validation
is excluded. Prints the device, each figure and its ratio to naive.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import time
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

FRAMES, DIM, CLASSES = 250, 2048, 101
HIDDEN, LAYERS, LR, CLIP = 256, 2, 1e-3, 1.0
POOL = 2048  # distinct random clips at most: about 1.5 GB of fp16 frames


def make_features(clips: int, seed: int) -> FeatureSet:
    """Random fp16 clips with UCF-101-like lengths, in memory."""
    rng = np.random.default_rng(seed)
    lengths = np.array([clip_length(rng, FRAMES) for _ in range(clips)], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    frames = rng.standard_normal((int(offsets[-1]), DIM), dtype=np.float32).astype(np.float16)
    labels = rng.integers(1, CLASSES + 1, size=clips)
    names = tuple(f"v_Bench_g{i % 25 + 1:02d}_c{i:02d}.avi" for i in range(clips))
    return FeatureSet(frames=frames, offsets=offsets, labels=labels, filenames=names,
                      texts=("Bench",) * clips, fps=25.0, fingerprint="bench")


class NaiveGRU(nn.Module):
    """The first port's model: read-out at step 250 of the zero-padded sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(DIM, HIDDEN, num_layers=LAYERS, batch_first=True)
        self.head = nn.Linear(HIDDEN, CLASSES + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)  # (batch, 250, hidden)
        return self.head(out[:, FRAMES - 1])


class Naive:
    """The first port's training loop, kept between rounds (model, optimizer, fp64 batch pool)."""

    def __init__(self, data: FeatureSet, batch: int, device: str) -> None:
        self.padded = np.zeros((batch, FRAMES, DIM), dtype=np.float64)  # (batch, 250, dim)
        for i in range(batch):
            self.padded[i, : data.lengths[i]] = data.frames[data.offsets[i] : data.offsets[i + 1]]
        self.labels = data.labels[:batch]
        self.device = device
        torch.manual_seed(0)
        self.model = NaiveGRU().to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR)
        self.rng = np.random.default_rng(0)

    def run(self, steps: int) -> tuple[int, float]:
        """Train steps steps; return (examples, seconds)."""
        start = time.perf_counter()
        total_loss = total_acc = 0.0
        for _ in range(steps):
            order = self.rng.permutation(len(self.labels))
            x = torch.from_numpy(self.padded[order]).float().to(self.device)  # fp64 -> fp32
            y = torch.from_numpy(self.labels[order]).to(self.device)
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
            self.opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
            self.opt.step()
            total_loss += loss.item()  # a sync every step on CUDA
            total_acc += (logits.argmax(1) == y).float().mean().item()
        return steps * len(self.labels), time.perf_counter() - start


class Ours:
    """models.training.train over BatchLoaders whose batches are fixed in advance."""

    def __init__(self, data: FeatureSet, device: str) -> None:
        spec = ModelSpec(kind="rnn", input_dim=DIM, num_classes=CLASSES, cell="gru",
                         hidden=HIDDEN, layers=LAYERS)
        self.config = TrainConfig(lr=LR, clip_norm=CLIP, epochs=1, device=device)
        self.data, self.device = data, device
        torch.manual_seed(0)
        self.model = build_model(spec)
        self.val = BatchLoader(data, np.arange(8), 8, device=device)  # not timed

    def run(self, batches: list[np.ndarray]) -> tuple[int, float]:
        """Train one epoch of exactly these batches; return (examples, training seconds)."""
        clips = np.concatenate(batches)
        loader = BatchLoader(self.data, clips, len(batches[0]), device=self.device)
        result = train(self.model, loader, self.val, self.config)
        return len(clips), len(clips) / result.examples_per_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto",
                        help="'auto' (cuda if available), cpu, cuda (default: auto)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per variant (default: 2 on CPU, 60 on CUDA)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="the variants take turns this many times, so a load that drifts "
                        "hits all alike (default: 2 on CPU, 3 on CUDA)")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="clips per batch (default: 256)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice); on a shared, busy "
                        "machine 1 avoids OpenMP threads stalling on each other")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    on_cuda = device.startswith("cuda")
    rounds = args.rounds or (3 if on_cuda else 2)
    steps = args.steps or (60 if on_cuda else 2)
    per_round = max(1, steps // rounds)
    steps = per_round * rounds
    batch = args.batch_size

    # Distinct clips up to POOL; batches beyond that draw them again (host memory is finite).
    data = make_features(min(batch * steps, POOL), seed=0)
    print(f"device: {device} ({device_name(device)}), torch {torch.__version__}")
    print(f"config: GRU {LAYERS}x{HIDDEN}, batch {batch}, up to {FRAMES} frames "
          f"(mean {data.lengths.mean():.0f}), {DIM}-d, Adam lr {LR}, clip {CLIP}; "
          f"{steps} timed steps per variant in {rounds} rounds, after 1 warm-up step")
    everything = np.arange(batch * steps) % len(data)
    plain = epoch_batches(everything, batch, shuffle=True, seed=0, epoch=1)
    bucketed = epoch_batches(everything, batch, shuffle=True, seed=0, epoch=1,
                             lengths=data.lengths, bucket=True)
    naive, ours = Naive(data, batch, device), Ours(data, device)
    naive.run(1)  # warm-up
    ours.run(plain[:1])
    totals = {"naive": [0, 0.0], "ours": [0, 0.0], "bucketed": [0, 0.0]}
    for r in range(rounds):
        part = slice(r * per_round, (r + 1) * per_round)
        for name, (n, seconds) in (("naive", naive.run(per_round)),
                                   ("ours", ours.run(plain[part])),
                                   ("bucketed", ours.run(bucketed[part]))):
            totals[name][0] += n
            totals[name][1] += seconds
    speed = {name: n / seconds for name, (n, seconds) in totals.items()}
    base = speed["naive"]
    print(f"naive (fp32, padded to {FRAMES}, read-out at step {FRAMES}, .item() per step, "
          f"fp64->fp32 per batch):  {base:8.1f} examples/s")
    print(f"ours (train() + BatchLoader, trimmed batches{', bf16' if on_cuda else ''}):"
          f"  {speed['ours']:8.1f} examples/s  {speed['ours'] / base:.2f}x naive")
    print(f"ours + length bucketing (BatchLoader(bucket=True)):"
          f"  {speed['bucketed']:8.1f} examples/s  {speed['bucketed'] / base:.2f}x naive")
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
