"""Benchmark feature extraction (frames/s): decoding alone, the CNN alone, and the whole pipeline.

    python bench/extract.py                       # CPU here: small generated set
    python bench/extract.py --device cuda --videos 64 --cnn-videos 64 --batch-size 256

Videos are generated at UCF-101's size (320x240, MPEG-4 part 2 in AVI, half at 25 fps and half at
29.97 fps) with moving shapes and noise, so the decoder does real work. The CNN is a randomly
initialised ResNet-50 (the speed does not depend on the weights). The pipeline figure is
`datasets.extract.extract` end to end (decode workers, batched CNN, shard writing); its ratio to
the CNN-alone figure says how close the pipeline gets to the CNN's own speed.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import extract
from datasets.extract import ExtractConfig, decode_video
from datasets.extract.run import _default_workers


def make_videos(root: Path, count: int, seconds: float) -> list[Path]:
    """Write `count` 320x240 MPEG-4 AVIs named like UCF-101 clips; return their paths."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        fps = Fraction(25) if i % 2 == 0 else Fraction(30000, 1001)
        path = root / f"v_ApplyEyeMakeup_g{i // 7 + 1:02d}_c{i % 7 + 1:02d}.avi"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("mpeg4", rate=fps)
            stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
            stream.bit_rate = 400_000  # about what UCF-101's xvid files use
            base = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
            for f in range(round(seconds * fps)):
                img = np.roll(base, 4 * f, axis=1)
                x, y = (7 * f) % 260, (5 * f) % 180
                img[y : y + 60, x : x + 60] = (255, 40, 40)
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        paths.append(path)
    return paths


class _Decode(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], seconds: float):
        self.paths, self.seconds = paths, seconds

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(decode_video(self.paths[i], 25, self.seconds, 224))


def bench_decode(paths: list[Path], seconds: float, workers: int) -> tuple[float, int]:
    """Return (frames/s, frames) of decoding + resizing + cropping the videos."""
    loader = torch.utils.data.DataLoader(
        _Decode(paths, seconds),
        batch_size=None,
        num_workers=workers,
    )
    start, frames = time.perf_counter(), 0
    for clip in loader:
        frames += len(clip)
    return frames / (time.perf_counter() - start), frames


def bench_cnn(frames: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Return frames/s of the ResNet-50 encoder alone on already decoded uint8 frames."""
    encoder, _ = extract.load_encoder("resnet50", random_init=True)
    encoder = encoder.to(device).to(memory_format=torch.channels_last)
    cuda = device.type == "cuda"
    frames = frames.to(device)

    def run() -> None:
        for i in range(0, len(frames), batch_size):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                encoder(frames[i : i + batch_size]).cpu()

    with torch.inference_mode():
        run() if cuda else encoder(frames[:2])  # warm-up (cuDNN autotune on CUDA)
        start = time.perf_counter()
        run()
        return len(frames) / (time.perf_counter() - start)


def bench_pipeline(root: Path, out: Path, args: argparse.Namespace) -> tuple[float, int]:
    """Return (frames/s, frames) of `datasets.extract.extract` over the videos, end to end."""
    cfg = ExtractConfig(
        videos=root,
        out=out,
        model="resnet50",
        random_init=True,
        seconds=args.seconds,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        shard_size=200,
    )
    start = time.perf_counter()
    result = extract.extract(cfg)
    return result.frames / (time.perf_counter() - start), result.frames


def device_name(device: torch.device) -> str:
    """Return a readable name of the device the CNN runs on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} torch threads"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=12, help="videos for the decode figures (12)")
    p.add_argument(
        "--cnn-videos",
        type=int,
        default=2,
        help="videos through ResNet-50 for the CNN and pipeline figures (2)",
    )
    p.add_argument("--seconds", type=float, default=4.0, help="seconds per video (4)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=None, help="frames per CNN batch")
    p.add_argument("--workers", type=int, default=None, help="decode workers (CPU cores - 1)")
    args = p.parse_args()
    device = torch.device(args.device)
    workers = _default_workers() if args.workers is None else args.workers
    batch = args.batch_size or (256 if device.type == "cuda" else 32)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "videos"
        root.mkdir()
        paths = make_videos(root, args.videos, args.seconds)
        print(f"device: {device_name(device)}; torch {torch.__version__}, PyAV {av.__version__}")
        print(
            f"{args.videos} videos 320x240 MPEG-4 ({args.seconds:g} s, 25 / 29.97 fps) -> "
            f"{args.seconds:g} s at 25 fps, 224x224"
        )
        one, frames = bench_decode(paths, args.seconds, workers=0)
        print(f"decode alone, 1 process:        {one:8.0f} frames/s ({frames} frames)")
        many, _ = bench_decode(paths, args.seconds, workers=workers)
        print(
            f"decode alone, {workers:2d} workers:       {many:8.0f} frames/s "
            f"({many / one:.2f}x one process)"
        )

        cnn_paths = paths[: args.cnn_videos]
        decoded = torch.cat(
            [torch.from_numpy(decode_video(q, 25, args.seconds)) for q in cnn_paths]
        )
        cnn = bench_cnn(decoded, batch, device)
        print(
            f"ResNet-50 alone (batch {batch}):   {cnn:8.1f} frames/s ({len(decoded)} frames"
            f"{', bf16 autocast' if device.type == 'cuda' else ', fp32'})"
        )
        for q in paths[args.cnn_videos :]:
            q.unlink()
        full, frames = bench_pipeline(
            root,
            Path(tmp) / "out",
            argparse.Namespace(
                seconds=args.seconds, device=args.device, batch_size=batch, workers=workers
            ),
        )
        print(
            f"decode + ResNet-50 + write:     {full:8.1f} frames/s ({frames} frames, "
            f"{full / cnn:.2f}x ResNet-50 alone, {workers} decode workers)"
        )
        # UCF-101: 13,320 clips of 7.2 s on average -> about 175 of at most 250 frames each.
        print(
            f"full UCF-101 (13,320 videos, ~2.3M frames) at this rate: "
            f"{13320 * 175 / full / 3600:.1f} h"
        )


if __name__ == "__main__":
    main()
