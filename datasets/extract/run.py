"""One extraction run: decode, encode and write every shard not already done."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from datasets import records, ucf101
from datasets.device import resolve_device
from datasets.errors import DataError
from datasets.extract.encoder import ClipBatcher, FrameEncoder, load_encoder
from datasets.extract.resume import (
    STATE_DIR,
    Skipped,
    _check_settings,
    _load_done,
    _remove_stale_temps,
    _settings,
    _write_shard,
    _write_skipped,
)
from datasets.extract.videos import (
    Shard,
    _init_worker,
    _VideoFrames,
    find_videos,
    label_videos,
    plan_shards,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractConfig:
    """Everything one extraction run needs; the CLI flags map onto these fields one to one."""

    videos: Path
    out: Path
    splits: Path | None = None
    model: str = "resnet50"
    weights: Path | None = None
    random_init: bool = False
    fps: float = 25.0
    seconds: float = 10.0
    image_size: int = 224
    device: str | None = None  # None: cuda when available, else cpu
    batch_size: int | None = None  # frames per CNN batch; None: 256 on CUDA, 32 on CPU
    workers: int | None = None  # decoding processes; None: one per CPU core but one, at most 16
    shard_size: int = 200

    @property
    def max_frames(self) -> int:
        """Frames per clip after resampling (and the length every record is padded to)."""
        return round(self.seconds * self.fps)


@dataclass
class ExtractResult:
    """What a run did: shard counts, clips and frames written, and the videos it skipped."""

    shards_total: int = 0
    shards_written: int = 0
    shards_resumed: int = 0  # already whole from an earlier run, left untouched
    clips_written: int = 0
    frames: int = 0  # real frames through the CNN in this run
    seconds: float = 0.0
    feature_dim: int = 0
    weights: str = ""
    device: str = ""
    skipped: list[Skipped] = field(default_factory=list)  # over all shards, this run's and earlier


def _default_workers() -> int:
    return max(1, min(16, len(os.sched_getaffinity(0)) - 1))


def _check_config(cfg: ExtractConfig) -> None:
    for name, value in (("fps", cfg.fps), ("seconds", cfg.seconds)):
        if not (value > 0 and math.isfinite(value)):
            raise DataError(f"--{name} must be a positive number, got {value}")
    if cfg.max_frames < 1:
        raise DataError(f"--seconds {cfg.seconds} at --fps {cfg.fps} is less than one frame")
    for name, value, least in (
        ("shard-size", cfg.shard_size, 1),
        ("batch-size", cfg.batch_size, 1),
        ("workers", cfg.workers, 0),
        ("image-size", cfg.image_size, 32),
    ):
        if value is not None and value < least:
            raise DataError(f"--{name} must be at least {least}, got {value}")
    if cfg.random_init and cfg.weights is not None:
        raise DataError("--random-init and --weights exclude each other; give one")


def extract(cfg: ExtractConfig, progress: bool = False) -> ExtractResult:
    """Extract features of every video under cfg.videos into shards in cfg.out; resumable."""
    started = time.perf_counter()
    _check_config(cfg)
    device = torch.device(resolve_device(cfg.device))
    class_index = None
    if cfg.splits is not None:
        class_index = ucf101.read_class_index(cfg.splits / "classInd.txt")
    videos = label_videos(find_videos(cfg.videos), class_index)
    encoder, weights = load_encoder(cfg.model, cfg.weights, cfg.random_init)
    if cfg.random_init:
        log.warning("RANDOM-INIT %s: the features are noise; tests/benchmarks only", cfg.model)

    try:
        (cfg.out / STATE_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create --out {str(cfg.out)!r}: {err.strerror}") from None
    _check_settings(cfg.out / STATE_DIR, _settings(cfg, videos, weights))

    shards = plan_shards(videos, cfg.shard_size)
    result = ExtractResult(
        shards_total=len(shards),
        feature_dim=encoder.feature_dim,
        weights=weights,
        device=str(device),
    )
    skipped_by_shard: dict[int, list[Skipped]] = {}
    todo: list[Shard] = []
    for shard in shards:
        done = _load_done(cfg.out, shard)
        if done is None:
            _remove_stale_temps(cfg.out, shard)
            todo.append(shard)
        else:
            result.shards_resumed += 1
            skipped_by_shard[shard.index] = [Skipped(**s) for s in done.get("skipped", [])]
    log.info(
        "%d videos in %d shards, %d already done; %s (%s) on %s",
        len(videos),
        len(shards),
        result.shards_resumed,
        cfg.model,
        weights,
        device,
    )
    if todo:
        _run_shards(cfg, todo, encoder, device, result, skipped_by_shard, progress)
    result.skipped = [s for i in sorted(skipped_by_shard) for s in skipped_by_shard[i]]
    _write_skipped(cfg.out, result.skipped)
    result.seconds = time.perf_counter() - started
    return result


def _run_shards(
    cfg: ExtractConfig,
    todo: Sequence[Shard],
    encoder: FrameEncoder,
    device: torch.device,
    result: ExtractResult,
    skipped_by_shard: dict[int, list[Skipped]],
    progress: bool,
) -> None:
    """Decode, encode and write the given shards, in order."""
    cuda = device.type == "cuda"
    batch_size = cfg.batch_size or (256 if cuda else 32)
    workers = _default_workers() if cfg.workers is None else cfg.workers
    if cuda:
        torch.backends.cudnn.benchmark = True
    encoder = encoder.to(device).to(memory_format=torch.channels_last)

    def embed(frames: torch.Tensor) -> torch.Tensor:  # (batch, H, W, 3) uint8 -> (batch, dim)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            return encoder(frames)

    jobs = [(shard, video) for shard in todo for video in shard.videos]  # in shard order
    frames_ds = _VideoFrames(
        [v.path for _, v in jobs],
        cfg.fps,
        cfg.seconds,
        cfg.image_size,
        threads=1,
    )
    loader = torch.utils.data.DataLoader(
        frames_ds,
        batch_size=None,  # one video per item; the CNN batches are made by ClipBatcher
        num_workers=workers,
        pin_memory=cuda,
        worker_init_fn=_init_worker if workers else None,
        # 2 clips (~37 MB each at 250 x 224 x 224 x 3) in shared memory per worker at most.
        prefetch_factor=2 if workers else None,
    )
    batcher = ClipBatcher(embed, batch_size)
    clips: dict[int, dict[int, records.Clip]] = {s.index: {} for s in todo}
    left = {s.index: len(s.videos) for s in todo}  # videos of each shard not yet finished
    for shard in todo:
        skipped_by_shard[shard.index] = []
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
    writing: Future | None = None

    def finish(job: int) -> None:
        nonlocal writing
        shard = jobs[job][0]
        left[shard.index] -= 1
        if left[shard.index]:
            return
        if writing is not None:
            writing.result()  # at most two shards in memory; a write error surfaces here
        by_job = clips.pop(shard.index)
        shard_clips = [by_job[k] for k in sorted(by_job)]
        writing = writer.submit(
            _write_shard,
            cfg.out,
            shard,
            shard_clips,
            skipped_by_shard[shard.index],
            cfg.max_frames,
        )
        result.shards_written += 1
        result.clips_written += len(shard_clips)

    def collect(finished: list[tuple[int, torch.Tensor]]) -> None:
        for job, features in finished:
            video = jobs[job][1]
            clips[jobs[job][0].index][job] = records.Clip(
                filename=video.filename,
                text=video.text,
                fps=cfg.fps,
                label=video.label,
                features=features.cpu().numpy(),  # (frames, dim) float32
            )
            finish(job)

    bar = _progress_bar(len(jobs), progress)
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            for job, frames, reason in loader:
                if reason:
                    shard, video = jobs[job]
                    skipped_by_shard[shard.index].append(Skipped(video.filename, reason))
                    log.warning("skipping %s: %s", video.path, reason)
                    finish(job)
                else:
                    result.frames += len(frames)
                    collect(batcher.add(job, frames.to(device, non_blocking=True)))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        frames_s=f"{result.frames / (time.perf_counter() - t0):.0f}", refresh=False
                    )
            collect(batcher.flush())
        if writing is not None:
            writing.result()
    finally:
        writer.shutdown(wait=True)  # an interrupted run still finishes the shard being written
        if bar is not None:
            bar.close()


def _progress_bar(total: int, enabled: bool) -> tqdm | None:
    if not enabled:
        return None
    return tqdm(total=total, unit="video", desc="extract", dynamic_ncols=True, smoothing=0.05)
