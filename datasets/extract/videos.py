"""Find and label UCF-101 videos, plan them into shards, and decode their frames (PyAV)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from datasets import ucf101
from datasets.errors import DataError
from datasets.ucf101 import NUM_CLASSES

SHARD_PREFIX = "ucf101"


VIDEO_SUFFIX = ".avi"


CROP = "resize-shorter-side+center-crop"


@dataclass(frozen=True)
class Video:
    """One source video and the label its record gets."""

    path: Path
    filename: str  # base name, v_<Class>_g<GG>_c<CC>.avi
    text: str  # class name as the class index spells it
    label: int  # class id 1..101 (or as in the user's classInd.txt)


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count`: videos [index * shard_size, (index + 1) * shard_size)."""

    index: int
    count: int
    videos: tuple[Video, ...]

    @property
    def name(self) -> str:
        """File name, e.g. ucf101-00003-of-00067.tfrecord."""
        return f"{SHARD_PREFIX}-{self.index:05d}-of-{self.count:05d}.tfrecord"


def find_videos(root: Path) -> list[Path]:
    """Return the .avi files under root (UCF-101 class folders or flat), sorted by file name."""
    if not root.is_dir():
        raise DataError(f"--videos {str(root)!r} is not a folder; point it at the UCF-101 folder")
    paths = sorted(
        (p for p in root.rglob("*") if p.suffix.lower() == VIDEO_SUFFIX and p.is_file()),
        key=lambda p: (p.name, str(p)),
    )
    if not paths:
        raise DataError(
            f"no {VIDEO_SUFFIX} videos under {str(root)!r}; expected <Class>/v_<Class>_gGG_cCC.avi"
        )
    for a, b in itertools.pairwise(paths):
        if a.name == b.name:
            raise DataError(f"video name {a.name!r} occurs twice: {a} and {b}; remove one of them")
    return paths


def label_videos(paths: Sequence[Path], class_index: dict[str, int] | None = None) -> list[Video]:
    """Return the videos with labels from their file names (and class_index when given)."""
    if class_index is None:
        ids = {name.lower(): (name, i + 1) for i, name in enumerate(ucf101.CLASS_NAMES)}
    else:
        # Lower-cased: UCF-101 names files v_HandStandPushups_* but the class HandstandPushups.
        ids = {name.lower(): (name, cid) for name, cid in class_index.items()}
        out_of_range = [f"{n} {i}" for n, i in class_index.items() if not 1 <= i <= NUM_CLASSES]
        if out_of_range:
            raise DataError(
                f"class index gives ids outside 1..{NUM_CLASSES} ({', '.join(out_of_range[:3])});"
                " the record format holds UCF-101's 101 classes, fix classInd.txt"
            )
    videos, bad = [], []
    for path in paths:
        try:
            class_name = ucf101.parse_clip_name(path.name).class_name
        except DataError:
            bad.append(f"{path.name} (not v_<Class>_g<GG>_c<CC>.avi)")
            continue
        if class_name.lower() not in ids:
            bad.append(f"{path.name} (class {class_name} not in the class index)")
            continue
        text, label = ids[class_name.lower()]
        videos.append(Video(path, path.name, text, label))
    if bad:
        raise DataError(
            f"{len(bad)} of {len(paths)} videos cannot be labelled, e.g. {'; '.join(bad[:3])}; "
            "rename or remove them (labels come from UCF-101 file names)"
        )
    return videos


def plan_shards(videos: Sequence[Video], shard_size: int) -> list[Shard]:
    """Return the shards over the video list in order: shard i = videos [i*size, (i+1)*size)."""
    count = math.ceil(len(videos) / shard_size)
    return [
        Shard(i, count, tuple(videos[i * shard_size : (i + 1) * shard_size])) for i in range(count)
    ]


def _frame_period(stream: av.video.stream.VideoStream) -> Fraction | None:
    """Return the stream's nominal frame duration in seconds, or None when it states no rate."""
    rate = stream.average_rate or stream.guessed_rate
    return 1 / Fraction(rate) if rate else None


def decode_video(
    path: str | Path, fps: float = 25.0, seconds: float = 10.0, size: int = 224, threads: int = 1
) -> np.ndarray:
    """Return the first `seconds` of a video at `fps` as (frames, size, size, 3) uint8 RGB.

    Output frame k shows whatever the source shows at time k / fps (measured from the first
    frame's timestamp), so sources at 29.97 or 15 fps come out at `fps` with the right timing;
    a video shorter than `seconds` gives fewer frames. Frames are resized so the shorter side is
    `size` (aspect kept) and centre-cropped to size x size. Raises av.FFmpegError or DataError on
    videos that cannot be decoded. threads: for decoding and scaling, 0 = FFmpeg's choice (at
    UCF-101's 320x240 one thread was faster than FFmpeg's choice, ~990 vs ~720 frames/s here;
    parallelism comes from decoding several videos in worker processes).
    """
    max_frames = round(seconds * fps)
    step = Fraction(fps).limit_denominator(1_000_000)
    out = np.empty((max_frames, size, size, 3), np.uint8)
    n = 0

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise DataError("no video stream")
        stream = container.streams.video[0]
        if threads:
            stream.codec_context.thread_count = threads
        crop: tuple[int, int, int, int] | None = None
        shown: av.VideoFrame | None = None  # the source frame on screen at the next output time
        shown_rgb: np.ndarray | None = None  # its crop, converted at most once
        shown_t = t0 = Fraction(0)

        def emit_until(t_end: Fraction) -> None:
            # Output frames k with k / fps < t_end all show `shown`.
            nonlocal n, shown_rgb, crop
            while n < max_frames and Fraction(n) / step < t_end:
                if shown_rgb is None:
                    if crop is None:
                        crop = _resize_crop(shown.width, shown.height, size)
                    w, h, x, y = crop
                    rgb = shown.to_ndarray(
                        width=w, height=h, format="rgb24", interpolation="BILINEAR", threads=threads
                    )
                    shown_rgb = rgb[y : y + size, x : x + size]
                out[n] = shown_rgb
                n += 1

        period = _frame_period(stream)
        for frame in container.decode(stream):
            if frame.pts is not None:  # exact: pts * time_base as fractions
                t = Fraction(frame.pts) * Fraction(frame.time_base or stream.time_base)
                if shown is None:
                    t0 = t
                t = t - t0
            elif shown is None:
                t = Fraction(0)
            elif period is not None:
                t = shown_t + period  # no timestamp: one nominal frame after the last one
            else:
                raise DataError("frames carry no timestamps and the stream states no frame rate")
            t = max(t, shown_t)  # a timestamp going backwards shows from the last one on
            if shown is not None:
                emit_until(t)
                if n >= max_frames:
                    break  # the rest of the video is past `seconds`; no need to decode it
            shown, shown_rgb, shown_t = frame, None, t
        if shown is not None and n < max_frames:
            # The last frame stays on screen for one frame duration.
            if shown.duration:
                duration = Fraction(shown.duration) * Fraction(shown.time_base or stream.time_base)
            else:
                duration = period or 1 / step
            emit_until(shown_t + duration)
    if n == 0:
        raise DataError("no frames could be decoded")
    return out[:n]


def _resize_crop(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """Return (resized width, resized height, crop x, crop y) for a shorter-side resize + crop."""
    scale = size / min(width, height)
    w, h = max(size, round(width * scale)), max(size, round(height * scale))
    return w, h, (w - size) // 2, (h - size) // 2


class _VideoFrames(torch.utils.data.Dataset):
    """Decodes video i to (i, frames uint8 (T, H, W, 3), '') or (i, empty, reason) on failure."""

    def __init__(self, paths: Sequence[Path], fps: float, seconds: float, size: int, threads: int):
        self.paths, self.fps, self.seconds, self.size = list(paths), fps, seconds, size
        self.threads = threads

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, str]:
        try:
            frames = decode_video(self.paths[i], self.fps, self.seconds, self.size, self.threads)
        # Any failure of one video (FFmpeg errors, odd containers, bugs in PyAV on broken input)
        # must only skip that video, never end a run of hours; the reason is reported.
        except Exception as err:
            reason = f"{type(err).__name__}: {err}".replace("\n", " ")
            return i, torch.empty(0, dtype=torch.uint8), reason
        return i, torch.from_numpy(frames), ""


def _init_worker(_: int) -> None:
    # Each worker decodes one video at a time; torch threads in it would only fight the CNN.
    torch.set_num_threads(1)
