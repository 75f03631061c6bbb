"""Batches of clips from a FeatureSet: stride, trimming, seeded order, prefetch, GPU residency."""

from __future__ import annotations

import hashlib
import logging
import math
import mmap
import queue
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from datasets.cache import FeatureSet, copy_rows_serial

log = logging.getLogger(__name__)

BUCKET_CHUNK_BATCHES = 50  # batches per chunk that is sorted by length when bucketing
RESIDENT_MAX_FRACTION = 0.5  # of the free GPU memory; the rest is left to models and activations
PREFETCH_DEPTH = 2  # batches ready ahead of the model
_COPY_CHUNK_BYTES = 64 << 20  # memmap -> device copy granularity (bounds host memory)
_HUGE_PAGE_MIN_BYTES = 8 << 20  # host batch buffers from here up are backed by huge pages
_HUGE_PAGE = 2 << 20


@dataclass(frozen=True)
class Batch:
    """One batch: padded features, real lengths and class ids, all on one device."""

    features: torch.Tensor  # (batch, time, dim); zeros beyond each clip's length
    lengths: torch.Tensor  # (batch,) int64, >= 1
    labels: torch.Tensor  # (batch,) int64, class ids 1..num_classes


def strided_lengths(lengths: np.ndarray, stride: int) -> np.ndarray:
    """Return the frames left of each clip after taking frames[::stride], i.e. ceil(len/stride)."""
    return (np.asarray(lengths, dtype=np.int64) + stride - 1) // stride


def epoch_batches(
    indices: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    lengths: np.ndarray | None = None,
    bucket: bool = False,
) -> list[np.ndarray]:
    """Return an epoch's batches as arrays of clip indices, ordered by a function of (seed, epoch).

    Bucketing (shuffled only): shuffle, sort chunks of BUCKET_CHUNK_BATCHES batches by clip length,
    cut them into batches, then shuffle the batch order. Batches hold clips of similar length (less
    padding) while which clips meet and the batch order stay random.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if not shuffle:
        return _split(indices, batch_size)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(indices)
    if not bucket:
        return _split(order, batch_size)
    if lengths is None:
        raise ValueError("bucketing needs the clip lengths")
    chunk = BUCKET_CHUNK_BATCHES * batch_size
    batches: list[np.ndarray] = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        batches += _split(part[np.argsort(lengths[part], kind="stable")], batch_size)
    return [batches[i] for i in rng.permutation(len(batches))]


def _split(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def gather_rows(
    starts: torch.Tensor, steps: torch.Tensor, stride: int, time: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (rows, mask), each (batch, time): row = starts[b] + t*stride, valid if t < steps[b].

    Masked positions point at the clip's first row, so every gathered row exists.
    """
    t = torch.arange(time, device=starts.device)
    mask = t[None, :] < steps[:, None]  # (batch, time)
    rows = starts[:, None] + t[None, :] * stride  # (batch, time)
    return torch.where(mask, rows, starts[:, None]), mask


class _ResidentFrames:
    """The loader's clips packed into one (rows, dim) fp16 device tensor, with local offsets."""

    def __init__(self, data: FeatureSet, clips: np.ndarray, device: torch.device):
        lengths = data.lengths[clips]
        self.offsets = np.zeros(len(clips) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.offsets[1:])
        self.local = np.full(len(data), -1, dtype=np.int64)  # global clip index -> local clip index
        self.local[clips] = np.arange(len(clips))
        dim = data.feature_dim
        self.frames = torch.empty((int(self.offsets[-1]), dim), dtype=torch.float16, device=device)
        chunk_rows = max(1, _COPY_CHUNK_BYTES // (2 * dim))
        source = frames_tensor(data.frames)
        pos = 0
        for start, stop in _row_runs(data.offsets, clips):
            for a in range(start, stop, chunk_rows):
                b = min(stop, a + chunk_rows)
                self.frames[pos : pos + b - a].copy_(source[a:b])
                pos += b - a
        if self.frames.is_cuda:
            # Stream rule (see BatchLoader): the copy is complete before anyone can see it, so
            # trials gathering from it on streams of their own never read a half-copied tensor.
            torch.cuda.current_stream(device).synchronize()


def frames_tensor(frames: np.ndarray) -> torch.Tensor:
    """Return a CPU tensor sharing the (possibly read-only, memory-mapped) frames; never written."""
    with warnings.catch_warnings():
        # torch warns that it cannot mark the tensor read-only; the loaders only ever read it.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(frames)


def host_buffer(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Return a zero-filled CPU tensor; large ones in memory backed by transparent huge pages.

    Why: a fresh 100 MB batch buffer (glibc maps large blocks anew each time) costs a page fault
    per 4 KB on first touch, which dominated the copy out of the cache. With huge pages an
    epoch over 1000 clips of 2048-d went from ~1.6k to ~5k clips/s here (bench/loader.py).
    """
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < _HUGE_PAGE_MIN_BYTES or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.zeros(shape, dtype=dtype)
    # A fresh anonymous map reads as zeros, so padding needs no writes. Private: Python's default
    # anonymous map is shared memory, which gets no huge pages here. One huge page larger, so
    # the buffer can start on a 2 MB boundary.
    mem = mmap.mmap(-1, nbytes + _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mem.madvise(mmap.MADV_HUGEPAGE)
    raw = np.frombuffer(mem, dtype=np.uint8)  # keeps the map alive as long as the tensor lives
    skip = -raw.ctypes.data % _HUGE_PAGE
    return torch.from_numpy(raw[skip : skip + nbytes]).view(dtype).view(shape)


def _row_runs(offsets: np.ndarray, clips: np.ndarray) -> list[tuple[int, int]]:
    """Return the frame-row ranges of sorted clips, neighbours merged into one range."""
    runs: list[tuple[int, int]] = []
    for c in clips:
        start, stop = int(offsets[c]), int(offsets[c + 1])
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], stop)
        else:
            runs.append((start, stop))
    return runs


# Train and validation loaders of one trial, and trials running as threads in one process
# (--jobs), ask for the same clips: share one device copy per (data, device, clips) while any
# loader holds it, instead of one copy each.
_RESIDENT_LOCK = threading.Lock()
_RESIDENT: weakref.WeakValueDictionary[tuple, _ResidentFrames] = weakref.WeakValueDictionary()


def _resident_key(data: FeatureSet, clips: np.ndarray, device: torch.device) -> tuple:
    # The fingerprint names the cache (a hash of the source files' paths, sizes, mtimes and
    # record CRCs, datasets.cache), so separately loaded FeatureSets of one cache share a copy.
    clips_digest = hashlib.sha1(clips.tobytes()).digest()
    return (data.fingerprint, data.frames.shape, str(device), clips_digest)


def _resident_frames(data: FeatureSet, clips: np.ndarray, device: torch.device) -> _ResidentFrames:
    key = _resident_key(data, clips, device)
    with _RESIDENT_LOCK:
        found = _RESIDENT.get(key)
        if found is None:
            found = _ResidentFrames(data, clips, device)
            _RESIDENT[key] = found
        return found


def _fits_on_device(data: FeatureSet, clips: np.ndarray, device: torch.device) -> bool:
    need = int(data.lengths[clips].sum()) * data.feature_dim * 2
    free, _total = torch.cuda.mem_get_info(device)
    return need <= RESIDENT_MAX_FRACTION * free


class BatchLoader:
    """Iterates a subset of a FeatureSet in batches, trimmed to each batch's longest clip.

    Host mode copies each batch out of the memmap into a host buffer (pinned when the device is
    CUDA) on a background thread while the model trains; the thread iterating the epoch copies it
    to the device. Resident mode copies the subset to the device once and builds batches by index
    gathering there; resident=None picks it for CUDA devices when it fits.
    """

    def __init__(
        self,
        data: FeatureSet,
        indices: np.ndarray,
        batch_size: int,
        *,
        stride: int = 1,
        shuffle: bool = False,
        seed: int = 0,
        device: str | torch.device = "cpu",
        resident: bool | None = None,
        prefetch: bool = True,
        dtype: torch.dtype = torch.float32,
        bucket: bool = False,
    ):
        indices = np.asarray(indices, dtype=np.int64)
        if indices.ndim != 1 or len(indices) == 0:
            raise ValueError(f"indices must be a non-empty 1-D array, got shape {indices.shape}")
        if indices.min() < 0 or indices.max() >= len(data):
            raise IndexError(
                f"indices must lie in 0..{len(data) - 1} (the FeatureSet has {len(data)} clips), "
                f"got {indices.min()}..{indices.max()}"
            )
        if batch_size < 1 or stride < 1:
            raise ValueError(f"batch_size and stride must be >= 1, got {batch_size} and {stride}")
        self.data = data
        self.indices = indices
        self.batch_size = int(batch_size)
        self.stride = int(stride)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.device = torch.device(device)
        self.prefetch = prefetch
        self.dtype = dtype
        self.bucket = bucket
        self.num_examples = len(indices)
        self._starts = np.ascontiguousarray(data.offsets[:-1])
        self._lengths = data.lengths
        self._steps = strided_lengths(self._lengths, self.stride)
        self._pin = self.device.type == "cuda"
        self._source = frames_tensor(data.frames)  # (total_frames, dim) fp16, shares the memmap
        # On the CPU the copy out of the cache widens fp16 to dtype in the same pass; for a GPU
        # fp16 travels (half the bytes) and is widened there.
        self._host_dtype = dtype if self.device.type == "cpu" else torch.float16
        clips = np.unique(indices)
        if resident is None:
            # A copy already on the device counts as fitting: it is shared, not made again.
            resident = self.device.type == "cuda" and (
                _resident_key(data, clips, self.device) in _RESIDENT
                or _fits_on_device(data, clips, self.device)
            )
        self._resident = _resident_frames(data, clips, self.device) if resident else None
        log.debug(
            "BatchLoader: %d clips, batch %d, stride %d, %s mode on %s",
            self.num_examples,
            self.batch_size,
            self.stride,
            "resident" if resident else "host",
            self.device,
        )

    @property
    def resident(self) -> bool:
        """Return True when the clips live on the device and batches are gathered there."""
        return self._resident is not None

    def __len__(self) -> int:
        return -(-self.num_examples // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """Yield the batches of one epoch; the order is a function of (seed, epoch) only."""
        batches = epoch_batches(
            self.indices,
            self.batch_size,
            shuffle=self.shuffle,
            seed=self.seed,
            epoch=epoch,
            lengths=self._lengths,
            bucket=self.bucket,
        )
        # The stream rule. Every tensor a trial reads is made on the stream the trial computes
        # on (its current stream, search.objective._own_stream) or ordered before it:
        # - host mode: the prefetch thread only fills (pinned) HOST buffers (_host_batch); the
        #   host->device copy (_to_device) runs in the generator body, i.e. in the consuming
        #   thread, on its current stream, so the trial's kernels queue behind it. A pinned
        #   buffer stays valid until its copy lands: PyTorch's caching host allocator records
        #   the copy's stream and reuses the block only once that copy has completed.
        # - resident mode: the shared copy is made and synchronized before it is published in
        #   _RESIDENT (_ResidentFrames); the gathers run on the consumer's stream.
        # - evaluation reads batches the same way; checkpoints (state_dict .to("cpu")) are
        #   synchronous copies on the trial's stream, so they see every finished update.
        if self._resident is not None:
            # The device gather is asynchronous already; a thread would only help a host copy.
            return map(self._gather, batches)
        if self.prefetch:
            return _prefetched(batches, self._host_batch, self._to_device)
        return (self._to_device(self._host_batch(clips)) for clips in batches)

    def _host_batch(self, clips: np.ndarray) -> _HostBatch:
        """Copy a batch out of the memmap into a (pinned) host buffer; touches no device."""
        steps = self._steps[clips]
        shape = (len(clips), int(steps.max()), self.data.feature_dim)  # (batch, time, dim)
        if self._pin:
            buf = torch.zeros(shape, dtype=self._host_dtype, pin_memory=True)
        else:
            buf = host_buffer(shape, self._host_dtype)
        source, stride = self._source, self.stride
        for row, (start, length, n) in enumerate(
            zip(
                self._starts[clips].tolist(),
                self._lengths[clips].tolist(),
                steps.tolist(),
                strict=True,
            )
        ):
            # (n, dim) view into the memmap, widened to the buffer's dtype
            copy_rows_serial(buf[row, :n], source[start : start + length : stride])
        return _HostBatch(buf, steps, clips)

    def _to_device(self, host: _HostBatch) -> Batch:
        """Copy a host batch to the device on the calling thread's current stream."""
        return self._finish(host.features, host.steps, host.clips)

    def _gather(self, clips: np.ndarray) -> Batch:
        """Gather a batch from the device-resident frames by index: row = offsets[b] + t*stride."""
        res = self._resident
        local = res.local[clips]
        steps = self._steps[clips]
        starts = torch.from_numpy(res.offsets[local]).to(self.device, non_blocking=True)
        steps_t = torch.from_numpy(steps).to(self.device, non_blocking=True)
        rows, mask = gather_rows(starts, steps_t, self.stride, int(steps.max()))
        feats = res.frames[rows].masked_fill_(~mask[..., None], 0)  # (batch, time, dim)
        return self._finish(feats, steps, clips)

    def _finish(self, feats: torch.Tensor, steps: np.ndarray, clips: np.ndarray) -> Batch:
        feats = feats.to(self.device, non_blocking=True).to(self.dtype)
        lengths = torch.from_numpy(steps).to(self.device, non_blocking=True)
        labels = torch.from_numpy(self.data.labels[clips]).to(self.device, non_blocking=True)
        return Batch(features=feats, lengths=lengths, labels=labels)


@dataclass(frozen=True)
class _HostBatch:
    """A batch in host memory, not yet on the device."""

    features: torch.Tensor  # (batch, time, dim), pinned when the device is CUDA
    steps: np.ndarray  # (batch,) frames per clip after the stride
    clips: np.ndarray  # (batch,) clip indices


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


_DONE = object()


def _prefetched(
    batches: list[np.ndarray],
    prepare: Callable[[np.ndarray], _HostBatch],
    finish: Callable[[_HostBatch], Batch],
) -> Iterator[Batch]:
    """Yield finish(prepare(b)) per batch: prepare on a background thread, finish on the caller's.

    The generator body runs in the consuming thread, so finish (the host->device copy) is issued
    on the consumer's current CUDA stream; the background thread never touches the device.
    """
    ready: queue.Queue = queue.Queue(maxsize=PREFETCH_DEPTH)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for clips in batches:
                if not put(prepare(clips)):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(_Failed(exc))

    # Started on the first next(): an epoch that is never iterated starts no thread, and one that
    # is abandoned early (break, exception, garbage collection) stops it in `finally`.
    thread = threading.Thread(target=work, name="batch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield finish(item)
    finally:
        stop.set()
        thread.join()
