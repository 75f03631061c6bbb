"""Extract per-frame ImageNet CNN features from UCF-101 videos into TFRecord shards.

    python -m datasets.extract --videos UCF-101/ --out data/ucf101/

Each video: the first --seconds seconds, resampled to --fps by timestamp, each frame resized so
its shorter side is --image-size and centre-cropped to a square, ImageNet-normalised, through a
torchvision ResNet up to its global average pool (2048-d for ResNet-50), zero-padded to
seconds * fps frames by the record writer. Shards hold --shard-size consecutive videos of the
sorted video list, so a shard's contents never depend on which videos failed to decode.
Frames decode in DataLoader worker processes while the CNN runs in large batches.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torchvision
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from datasets import records, ucf101
from datasets.errors import DataError, UserError
from datasets.ucf101 import NUM_CLASSES

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SHARD_PREFIX = "ucf101"
# Hidden, so that the default shard glob (data/ucf101/*) never matches the bookkeeping.
STATE_DIR = ".extract"
MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
VIDEO_SUFFIX = ".avi"
CROP = "resize-shorter-side+center-crop"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_INIT_SEED = 0


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


@dataclass(frozen=True)
class Skipped:
    """A video left out of its shard, and why."""

    filename: str
    reason: str


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


class WeightsNotFound(DataError):
    """Pretrained weights are neither in the torch hub cache nor given with --weights."""


# ----------------------------------------------------------------------------- videos and shards


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


# ----------------------------------------------------------------------------- decoding


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


# ----------------------------------------------------------------------------- the CNN


def weight_files(model: str) -> list[str]:
    """Return the torchvision checkpoint file names of the model's ImageNet weights, best first."""
    enum = torchvision.models.get_model_weights(model)
    ordered = [enum.DEFAULT, *(w for w in enum if w is not enum.DEFAULT)]
    return [w.url.rsplit("/", 1)[-1] for w in ordered]


def find_cached_weights(model: str) -> Path | None:
    """Return the model's ImageNet weights from the torch hub cache, or None when not there."""
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    for name in weight_files(model):
        if (checkpoints / name).is_file():
            return checkpoints / name
    return None


def _missing_weights_message(model: str) -> str:
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    name = weight_files(model)[0]
    return (
        f"no pretrained {model} weights in the torch hub cache ({checkpoints}/{name} or "
        f"{' / '.join(weight_files(model)[1:]) or 'older versions'}) and this tool never downloads;"
        f" on a machine with internet run `curl -LO https://download.pytorch.org/models/{name}`, "
        f"copy the file to {checkpoints}/ here, or pass --weights PATH/{name}"
    )


class FrameEncoder(nn.Module):
    """ImageNet ResNet up to its global average pool: uint8 (B, H, W, 3) -> float32 (B, dim)."""

    def __init__(self, net: torchvision.models.ResNet):
        super().__init__()
        self.feature_dim: int = net.fc.in_features
        net.fc = nn.Identity()
        # Pool in float32 even under bf16 autocast: the features are the product, and a bf16
        # mean keeps only 3 significant digits.
        net.avgpool = _MeanPoolFloat32()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        # permute of NHWC is already channels_last in memory: no copy before the float cast.
        x = frames.permute(0, 3, 1, 2).float()  # (batch, 3, H, W), channels_last strides
        x = (x - self.mean) / self.std
        return self.net(x.contiguous(memory_format=torch.channels_last)).float()


class _MeanPoolFloat32(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mean(dim=(2, 3), keepdim=True)  # (batch, channels, 1, 1)


def load_encoder(
    model: str, weights: Path | None = None, random_init: bool = False
) -> tuple[FrameEncoder, str]:
    """Return the frame encoder on the CPU in eval mode and a description of its weights.

    Weights come from `weights`, else the torch hub cache; random_init gives seeded random ones
    (for tests and benchmarks). Never downloads: raises WeightsNotFound instead.
    """
    if model not in MODELS:
        raise DataError(f"--model {model!r} is not supported; choose one of {', '.join(MODELS)}")
    if random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)  # same features on a resumed run
            net = torchvision.models.get_model(model, weights=None)
        return FrameEncoder(net).eval(), f"random-init (seed {RANDOM_INIT_SEED})"
    path = weights if weights is not None else find_cached_weights(model)
    if path is None:
        raise WeightsNotFound(_missing_weights_message(model))
    if not path.is_file():
        raise DataError(f"--weights {str(path)!r} does not exist; give the path of a .pth file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types on a bad file
        raise DataError(
            f"cannot load weights {str(path)!r}: {err}; is it a torch .pth file?"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    net = torchvision.models.get_model(model, weights=None)
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()[0:2]
        raise DataError(
            f"weights {str(path)!r} do not fit torchvision {model}: {' '.join(first)}; "
            f"give --model the architecture the file was saved from"
        ) from None
    return FrameEncoder(net).eval(), f"{path.name} ({_sha256(path)[:12]})"


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class ClipBatcher:
    """Runs `embed` on fixed-size batches of frames drawn from consecutive clips.

    Clips go in whole, frames are batched across clip boundaries (so a 256-frame batch is full
    even with 250-frame clips), and each clip's features come out, in order, once all of its
    frames have been through `embed`.
    """

    def __init__(self, embed: Callable[[torch.Tensor], torch.Tensor], batch_size: int):
        self.embed, self.batch_size = embed, batch_size
        self._frames: list[torch.Tensor] = []  # waiting for the CNN
        self._n_frames = 0
        self._clips: deque[tuple[int, int]] = deque()  # (key, frames) not yet handed out
        self._done: list[torch.Tensor] = []  # features not yet handed out
        self._n_done = 0

    def add(self, key: int, frames: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """Queue one clip's frames; return the (key, features) of the clips now finished."""
        self._frames.append(frames)
        self._n_frames += len(frames)
        self._clips.append((key, len(frames)))
        while self._n_frames >= self.batch_size:
            self._run(self.batch_size)
        return self._finished()

    def flush(self) -> list[tuple[int, torch.Tensor]]:
        """Run the frames left over; return the (key, features) of all remaining clips."""
        if self._n_frames:
            self._run(self._n_frames)
        return self._finished()

    def _run(self, n: int) -> None:
        pending = torch.cat(self._frames) if len(self._frames) > 1 else self._frames[0]
        self._frames = [pending[n:]] if len(pending) > n else []
        self._n_frames -= n
        self._done.append(self.embed(pending[:n]))
        self._n_done += n

    def _finished(self) -> list[tuple[int, torch.Tensor]]:
        out = []
        while self._clips and self._clips[0][1] <= self._n_done:
            key, n = self._clips.popleft()
            done = torch.cat(self._done) if len(self._done) > 1 else self._done[0]
            out.append((key, done[:n]))
            self._done = [done[n:]] if len(done) > n else []
            self._n_done -= n
        return out


# ----------------------------------------------------------------------------- resumable output


def _settings(cfg: ExtractConfig, videos: Sequence[Video], weights: str) -> dict:
    """Everything that decides the shards' contents; a resumed run must match it."""
    listing = "\n".join(f"{v.filename}\t{v.label}\t{v.text}" for v in videos)
    return {
        "format_version": FORMAT_VERSION,
        "model": cfg.model,
        "weights": weights,
        "fps": cfg.fps,
        "seconds": cfg.seconds,
        "pad_to": cfg.max_frames,
        "image_size": cfg.image_size,
        "crop": CROP,
        "shard_size": cfg.shard_size,
        "videos": len(videos),
        "videos_sha256": hashlib.sha256(listing.encode()).hexdigest(),
    }


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # atomic: the file is whole or absent


def _write_json(path: Path, data: dict) -> None:
    _write_text(path, json.dumps(data, indent=1) + "\n")


def _check_settings(state: Path, settings: dict) -> None:
    """Record the run's settings, or refuse to resume over shards made with other ones."""
    path = state / "settings.json"
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = [k for k in settings if old.get(k) != settings[k]]
        # Without finished shards there is nothing to protect: the new settings simply win.
        if diff and any(state.glob(f"{SHARD_PREFIX}-*.json")):
            what = ", ".join(f"{k} {old.get(k)!r} -> {settings[k]!r}" for k in diff[:4])
            raise DataError(
                f"{state.parent} holds shards extracted with other settings ({what}); "
                "give a new --out, or delete that folder to start over"
            )
    _write_json(path, settings)


def _manifest_path(out: Path, shard: Shard) -> Path:
    return out / STATE_DIR / f"{shard.name}.json"


def _load_done(out: Path, shard: Shard) -> dict | None:
    """Return the manifest of a shard an earlier run finished, or None when it must be (re)done.

    A shard counts as done only when its manifest exists (written after the shard) and so does
    the shard file under its final name (records.write_clips renames a whole file into place).
    The manifest also keeps the shard's skipped videos, so skipped.txt stays complete on resume.
    """
    path = _manifest_path(out, shard)
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("clips", 0) > 0 and not (out / shard.name).is_file():
        return None
    return manifest


def _write_shard(out: Path, shard: Shard, clips: list[records.Clip], skipped: list[Skipped],
                 pad_to: int) -> None:
    """Write one shard (nothing when every video was skipped), then its manifest."""
    if clips:
        records.write_clips(out / shard.name, clips, pad_to=pad_to)
    _write_json(
        _manifest_path(out, shard),
        {"shard": shard.name, "clips": len(clips), "skipped": [asdict(s) for s in skipped]},
    )


def skipped_path(out: Path) -> Path:
    """Return where the list of skipped videos goes: <out>/.extract/skipped.txt.

    Not <out>/skipped.txt: the data contract's default shard glob (data/ucf101/*) would read
    that text file as a TFRecord shard and fail; glob patterns never match hidden names.
    """
    return out / STATE_DIR / "skipped.txt"


def _write_skipped(out: Path, skipped: Sequence[Skipped]) -> None:
    """Write 'filename<TAB>reason' lines (an empty file when nothing was skipped)."""
    _write_text(skipped_path(out), "".join(f"{s.filename}\t{s.reason}\n" for s in skipped))


def _remove_stale_temps(out: Path, shard: Shard) -> None:
    # records.write_clips writes .<name>.<random>.tmp and renames; a killed run leaves it behind.
    for tmp in out.glob(f".{shard.name}.*.tmp"):
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- the run


def _resolve_device(requested: str | None) -> torch.device:
    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise DataError(f"--device {requested!r} is not a torch device; use cuda or cpu") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda but torch finds no CUDA GPU here; use --device cpu")
    return device


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
    device = _resolve_device(cfg.device)
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
        shards_total=len(shards), feature_dim=encoder.feature_dim, weights=weights,
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
        len(videos), len(shards), result.shards_resumed, cfg.model, weights, device,
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
        [v.path for _, v in jobs], cfg.fps, cfg.seconds, cfg.image_size,
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
            _write_shard, cfg.out, shard, shard_clips, skipped_by_shard[shard.index],
            cfg.max_frames,
        )
        result.shards_written += 1
        result.clips_written += len(shard_clips)

    def collect(finished: list[tuple[int, torch.Tensor]]) -> None:
        for job, features in finished:
            video = jobs[job][1]
            clips[jobs[job][0].index][job] = records.Clip(
                filename=video.filename, text=video.text, fps=cfg.fps, label=video.label,
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
                    bar.set_postfix(frames_s=f"{result.frames / (time.perf_counter() - t0):.0f}",
                                    refresh=False)
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


# ----------------------------------------------------------------------------- CLI


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
    p.add_argument("--videos", type=Path, required=True,
                   help="folder of videos: UCF-101/<Class>/v_<Class>_gGG_cCC.avi, or flat")
    p.add_argument("--out", type=Path, required=True,
                   help="folder for the shards, e.g. data/ucf101/")
    p.add_argument("--splits", type=Path, default=None,
                   help="ucfTrainTestlist/ folder; labels then come from its classInd.txt "
                   "(default: the official 101-class order built in)")
    p.add_argument("--model", default="resnet50", choices=MODELS,
                   help="torchvision ImageNet CNN (default: resnet50, 2048-d features)")
    p.add_argument("--weights", type=Path, default=None,
                   help="weights .pth file (default: torchvision's file in the torch hub cache; "
                   "never downloaded)")
    p.add_argument("--random-init", action="store_true",
                   help="random weights, FOR TESTS AND BENCHMARKS ONLY: the features are noise")
    p.add_argument("--fps", type=float, default=25.0, help="frames per second taken (default: 25)")
    p.add_argument("--seconds", type=float, default=10.0,
                   help="seconds taken from the start of each video; records are padded to "
                   "seconds * fps frames (default: 10)")
    p.add_argument("--image-size", type=int, default=224,
                   help="shorter side resized to this, then centre-cropped square (default: 224)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="frames per CNN batch (default: 256 on CUDA, 32 on CPU)")
    p.add_argument("--workers", type=int, default=None,
                   help="decoding processes, 0 = decode in this process (default: CPU cores - 1, "
                   "at most 16)")
    p.add_argument("--shard-size", type=int, default=200, help="videos per shard (default: 200)")
    return p


def config_from_args(args: argparse.Namespace) -> ExtractConfig:
    """Return the ExtractConfig the parsed flags describe."""
    return ExtractConfig(
        videos=args.videos, out=args.out, splits=args.splits, model=args.model,
        weights=args.weights, random_init=args.random_init, fps=args.fps, seconds=args.seconds,
        image_size=args.image_size, device=args.device, batch_size=args.batch_size,
        workers=args.workers, shard_size=args.shard_size,
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
        print("interrupted: finished shards are kept; re-run the same command to resume",
              file=sys.stderr)
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


if __name__ == "__main__":
    sys.exit(main())
