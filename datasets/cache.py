"""Decode TFRecord shards once into a memory-mapped fp16 feature cache, keyed by the sources.

Layout of one cache, cache_dir/<fingerprint>/:
    frames.f16     raw little-endian float16, (total_frames, dim), clips back to back, no padding
    meta.npz       offsets (n+1,) int64, labels (n,) int64, fps (n,) float32, filenames, texts
    manifest.json  format version, shape, source files (path, size, mtime_ns, records), decode time

The folder name (the fingerprint) is a hash of each source file's path, size, mtime and a
framing digest (records.framing_digest: every record's stored CRC for plain shards, the first
and last 64 KiB for GZIP ones). Path, size and mtime alone miss a shard rewritten in place with
the same size and mtime (copy tools that keep times); the CRCs see any changed record while
reading ~16 bytes per record, far less than a decode. It is not a hash of every byte: a GZIP
shard changed only in its middle with its size, mtime and trailer kept would be missed.

A cache is built in a hidden temp folder next to it and published with one os.rename, so a
reader sees a whole cache or none. Builders on one machine take turns on a lock file (the
second finds the cache built); builders that do not share the lock (hosts on a network file
system) both build, one rename wins and the other discards its copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

try:
    import fcntl
except ImportError:  # Windows: no lock, the rename alone keeps concurrent builds safe
    fcntl = None

from datasets import records
from datasets.errors import DataError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the layout above changes: old caches then stop matching
FRAMES_FILE = "frames.f16"
META_FILE = "meta.npz"
MANIFEST_FILE = "manifest.json"
_BUILD_PREFIX = ".build-"
_LOCK_PREFIX = ".lock-"
TORCH_GRAIN_SIZE = 32768  # at::internal::GRAIN_SIZE: smaller element-wise ops stay serial
_FP16_FINITE_BELOW = 65520.0  # float32 values from here up round to inf in float16 (max 65504)


@dataclass(frozen=True)
class FeatureSet:
    """Every clip of a dataset: ragged fp16 frames (memory-mapped) plus per-clip metadata."""

    # (total_frames, dim) float16 np.memmap; clip i = frames[offsets[i]:offsets[i+1]]
    frames: np.ndarray
    offsets: np.ndarray  # (n + 1,) int64
    labels: np.ndarray  # (n,) int64, class ids 1..101
    filenames: tuple[str, ...]
    texts: tuple[str, ...]
    fps: float
    fingerprint: str

    @property
    def lengths(self) -> np.ndarray:
        """Return the number of real frames of each clip, (n,) int64."""
        return np.diff(self.offsets)

    @property
    def feature_dim(self) -> int:
        """Return the size of one frame's feature vector."""
        return int(self.frames.shape[1])

    def __len__(self) -> int:
        return len(self.labels)


def source_fingerprint(paths: Sequence[str]) -> str:
    """Return a hash of the files' paths, sizes, mtimes and framing digests (in order) + format."""
    sources = _describe_sources(paths)
    payload = json.dumps({"format": FORMAT_VERSION, "sources": sources}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _describe_sources(paths: Sequence[str]) -> list[dict]:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            framing = records.framing_digest(p).hex()[:32]
        except OSError as err:
            raise DataError(f"cannot read TFRecord file {p!r}: {err.strerror}") from None
        out.append(
            {
                "path": str(Path(p).resolve()),
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                "records": framing,
            }
        )
    return out


def load_features(pattern: str, cache_dir: str | Path = "data/cache") -> FeatureSet:
    """Return the clips of the shards matching pattern, decoding them into the cache only once."""
    paths = records.find_shards(pattern)
    fingerprint = source_fingerprint(paths)
    root = Path(cache_dir)
    target = root / fingerprint
    if target.is_dir():
        try:
            return _open_cache(target, fingerprint)
        except _BrokenCache as err:
            log.warning("feature cache %s is unreadable (%s); rebuilding it", target, err)
            _discard(target)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _build_lock(root, fingerprint):
            # Another process on this machine may have built it while this one waited.
            if not (target / MANIFEST_FILE).is_file():
                _build_and_publish(paths, pattern, root, fingerprint)
    except OSError as err:
        raise DataError(
            f"cannot write the feature cache folder {str(root)!r}: {err}; check its permissions "
            "or point the cache somewhere else"
        ) from None
    return _open_cache(target, fingerprint)


@contextlib.contextmanager
def _build_lock(root: Path, fingerprint: str) -> Iterator[None]:
    """Hold a lock file while building, so other processes on this machine wait, not decode.

    Processes that do not share the lock (other hosts on a network file system) still build
    at once safely: the rename in _build_and_publish lets one of them win.
    """
    if fcntl is None:
        yield
        return
    with open(root / f"{_LOCK_PREFIX}{fingerprint}", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning(
                "another process is building feature cache %s; waiting for it", root / fingerprint
            )
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_and_publish(paths: list[str], pattern: str, root: Path, fingerprint: str) -> None:
    """Decode into a temp folder in root, then rename it to root/fingerprint (one wins)."""
    target = root / fingerprint
    _remove_dead_builds(root)
    prefix = f"{_BUILD_PREFIX}{os.getpid()}@{socket.gethostname()}@"
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    try:
        _build(paths, pattern, tmp, fingerprint)
        if source_fingerprint(paths) != fingerprint:
            raise DataError(
                f"TFRecord files matching {pattern!r} changed while they were being decoded; "
                "run again once they are complete"
            )
        try:
            os.rename(tmp, target)
        except OSError as err:
            if not (target / MANIFEST_FILE).is_file():
                raise DataError(
                    f"cannot publish the feature cache {str(target)!r}: {err}"
                ) from None
            log.info("another process published feature cache %s first; using it", target)
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            _remove_outdated(root, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class _BrokenCache(Exception):
    """A published cache folder that cannot be read (files deleted or damaged by hand)."""


def _open_cache(folder: Path, fingerprint: str) -> FeatureSet:
    """Memory-map a published cache."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        total, dim = int(manifest["frames"]), int(manifest["dim"])
        with np.load(folder / META_FILE, allow_pickle=False) as meta:
            offsets = meta["offsets"]
            labels = meta["labels"]
            fps = meta["fps"]
            filenames = tuple(meta["filenames"].tolist())
            texts = tuple(meta["texts"].tolist())
        size = (folder / FRAMES_FILE).stat().st_size
        if size != total * dim * 2 or offsets[-1] != total or len(labels) != len(offsets) - 1:
            raise ValueError(f"{FRAMES_FILE} holds {size} bytes, manifest says {total}x{dim}")
        frames = np.memmap(folder / FRAMES_FILE, dtype=np.float16, mode="r", shape=(total, dim))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise _BrokenCache(f"{type(err).__name__}: {err}") from None
    return FeatureSet(
        frames=frames,
        offsets=offsets,
        labels=labels,
        filenames=filenames,
        texts=texts,
        fps=float(fps[0]),
        fingerprint=fingerprint,
    )


def _build(paths: list[str], pattern: str, folder: Path, fingerprint: str) -> None:
    """Decode every clip into folder, streaming frames to disk one clip at a time."""
    log.warning(
        "decoding %d TFRecord file(s) matching %r into the feature cache %s (once; later runs "
        "memory-map it)",
        len(paths),
        pattern,
        folder.parent / fingerprint,
    )
    start = time.perf_counter()
    offsets, labels, fps, filenames, texts = [0], [], [], [], []
    dim: int | None = None
    first = ""
    frames_path = folder / FRAMES_FILE
    try:
        with open(frames_path, "wb") as out:
            for path in paths:
                # One file per call so errors below can name the file and record.
                for record, clip in enumerate(records.read_clips([path])):
                    where = f"{path}: record {record} (0-based, clip {clip.filename!r})"
                    features = clip.features
                    if dim is None:
                        dim, first = features.shape[1], where
                    elif features.shape[1] != dim:
                        raise DataError(
                            f"{where}: frames have {features.shape[1]} features but {first} has "
                            f"{dim}; all clips need one feature size, re-extract or drop the shard"
                        )
                    out.write(_to_fp16(features, where))
                    offsets.append(offsets[-1] + len(features))
                    labels.append(clip.label)
                    fps.append(clip.fps)
                    filenames.append(clip.filename)
                    texts.append(clip.text)
            out.flush()
            os.fsync(out.fileno())
        if len(set(fps)) > 1:
            log.warning(
                "clips matching %r were taken at different frame rates (%s); FeatureSet.fps "
                "reports the first clip's",
                pattern,
                sorted(set(fps))[:5],
            )
        np.savez(
            folder / META_FILE,
            offsets=np.asarray(offsets, dtype=np.int64),
            labels=np.asarray(labels, dtype=np.int64),
            fps=np.asarray(fps, dtype=np.float32),
            filenames=np.asarray(filenames, dtype=str),
            texts=np.asarray(texts, dtype=str),
        )
        seconds = time.perf_counter() - start
        manifest = {
            "format": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "clips": len(labels),
            "frames": offsets[-1],
            "dim": dim,
            "dtype": "<f2",
            "pattern": pattern,
            "sources": _describe_sources(paths),
            "decode_seconds": round(seconds, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    except OSError as err:
        raise DataError(
            f"cannot write the feature cache in {str(folder.parent)!r}: {err}; free disk space "
            "or point the cache somewhere else"
        ) from None
    mb = sum(os.path.getsize(p) for p in paths) / 1e6
    log.info(
        "decoded %d clips (%d frames x %d) from %.0f MB in %.1f s (%.0f MB/s)",
        len(labels),
        offsets[-1],
        dim,
        mb,
        seconds,
        mb / max(seconds, 1e-9),
    )


def _to_fp16(features: np.ndarray, where: str) -> np.ndarray:
    """Return features as float16; DataError when a value is not finite or beyond fp16's range."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    lo, hi = float(features.min()), float(features.max())  # NaN propagates, and fails below
    if not (lo > -_FP16_FINITE_BELOW and hi < _FP16_FINITE_BELOW):
        peak = max(abs(lo), abs(hi))
        what = f"values up to {peak:g}" if np.isfinite(peak) else "non-finite values (NaN or inf)"
        raise DataError(
            f"{where}: features hold {what}, beyond float16's range (max 65504) used by the "
            "feature cache; fix the extraction or rescale the features"
        )
    # torch rounds like numpy (to nearest even) but ~20x faster than ndarray.astype(float16).
    # Imported here: memory-mapping a built cache, the common case, needs no torch.
    import torch

    half = np.empty(features.shape, dtype=np.float16)
    copy_rows_serial(torch.from_numpy(half), torch.from_numpy(features))
    return half


def copy_rows_serial(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Copy src into dst (rows, ...), converting dtype, on the calling thread only.

    Why: torch splits a large copy over its intra-op threads; on a 2-core machine with anything
    else running, the threads wait on each other and a 1.5 MB fp32->fp16 copy took 5 ms instead
    of 0.03 ms. Pieces below torch's parallel grain size run serially, and the copy is
    memory-bound anyway. (torch.set_num_threads would change it for every thread.)
    """
    row = max(1, math.prod(src.shape[1:]))
    piece = max(1, (TORCH_GRAIN_SIZE - 1) // row)
    for a in range(0, src.shape[0], piece):
        dst[a : a + piece].copy_(src[a : a + piece])


def _discard(folder: Path) -> None:
    """Remove a cache folder: first rename it away, so no reader opens a half-deleted one."""
    trash = folder.with_name(f"{_BUILD_PREFIX}trash-{os.getpid()}-{folder.name}")
    try:
        os.rename(folder, trash)
    except OSError:
        return  # another process moved it first
    shutil.rmtree(trash, ignore_errors=True)


def _remove_dead_builds(root: Path) -> None:
    """Remove temp folders left by builders on this host that died (killed, out of disk)."""
    host = socket.gethostname()
    for entry in root.glob(f"{_BUILD_PREFIX}*@*@*"):
        pid_text, entry_host, _ = entry.name[len(_BUILD_PREFIX) :].split("@", 2)
        if entry_host != host or not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        log.info("removing %s, left by a feature-cache build that did not finish", entry)
        shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_outdated(root: Path, fresh: Path) -> None:
    """Remove caches built from the same files before they changed (they can never match again)."""
    try:
        paths = [s["path"] for s in json.loads((fresh / MANIFEST_FILE).read_text())["sources"]]
    except (OSError, ValueError, KeyError):
        return
    for other in root.iterdir():
        if other == fresh or other.name.startswith("."):
            continue
        try:
            manifest = json.loads((other / MANIFEST_FILE).read_text())
            old = [s["path"] for s in manifest["sources"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if old == paths:
            log.info("removing outdated feature cache %s (its source files changed)", other)
            _discard(other)
