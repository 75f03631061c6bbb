"""Resume bookkeeping: the run's settings, finished shards' manifests, skipped videos."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from datasets import records
from datasets.errors import DataError
from datasets.extract.videos import CROP, SHARD_PREFIX, Shard, Video

if TYPE_CHECKING:  # run.py imports this module: the config is only an annotation here
    from datasets.extract.run import ExtractConfig

FORMAT_VERSION = 1


# Hidden, so that the default shard glob (data/ucf101/*) never matches the bookkeeping.
STATE_DIR = ".extract"


@dataclass(frozen=True)
class Skipped:
    """A video left out of its shard, and why."""

    filename: str
    reason: str


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


def _write_shard(
    out: Path, shard: Shard, clips: list[records.Clip], skipped: list[Skipped], pad_to: int
) -> None:
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
