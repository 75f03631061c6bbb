"""Feature cache: decode once, memory-map later, rebuild on change, one good cache under races."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from datasets import cache, records
from datasets.cache import load_features
from datasets.errors import DataError
from datasets.records import Clip


def make_clips(n: int, dim: int = 6, seed: int = 0, scale: float = 10.0) -> list[Clip]:
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(n):
        length = int(rng.integers(1, 12))
        clips.append(
            Clip(
                filename=f"v_Archery_g{i % 25 + 1:02d}_c{i // 25 + 1:02d}.avi",
                text="Archery",
                fps=25.0,
                label=3,
                features=(rng.standard_normal((length, dim)) * scale).astype(np.float32),
            )
        )
    return clips


def write_shards(folder: Path, clips: list[Clip], per_shard: int = 4) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(0, len(clips), per_shard):
        shard = folder / f"part-{s // per_shard:03d}.tfrecord"
        records.write_clips(shard, clips[s : s + per_shard], pad_to=12)
    return str(folder / "part-*.tfrecord")


class DecodeCounter:
    """Wraps records.read_clips to count the clips decoded."""

    def __init__(self, monkeypatch):
        self.clips = 0
        real = records.read_clips

        def counting(pattern):
            for clip in real(pattern):
                self.clips += 1
                yield clip

        monkeypatch.setattr(records, "read_clips", counting)


def entries(root: Path) -> list[str]:
    """Names in a cache folder, without the (empty) lock files."""
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(cache._LOCK_PREFIX))


def assert_matches(fs: cache.FeatureSet, clips: list[Clip]) -> None:
    assert len(fs) == len(clips)
    assert fs.lengths.tolist() == [c.sequence_length for c in clips]
    assert fs.feature_dim == clips[0].features.shape[1]
    assert fs.frames.dtype == np.float16
    for i, clip in enumerate(clips):
        got = fs.frames[fs.offsets[i] : fs.offsets[i + 1]]
        np.testing.assert_array_equal(got, clip.features.astype(np.float16))
    assert fs.labels.tolist() == [c.label for c in clips]
    assert fs.labels.dtype == np.int64 and fs.offsets.dtype == np.int64
    assert fs.filenames == tuple(c.filename for c in clips)
    assert fs.texts == tuple(c.text for c in clips)
    assert fs.fps == 25.0


def test_second_load_memory_maps_without_decoding(tmp_path, monkeypatch):
    clips = make_clips(10)
    pattern = write_shards(tmp_path / "data", clips)
    counter = DecodeCounter(monkeypatch)
    first = load_features(pattern, tmp_path / "cache")
    assert counter.clips == 10
    assert_matches(first, clips)
    built = (tmp_path / "cache" / first.fingerprint / cache.FRAMES_FILE).stat().st_mtime_ns

    second = load_features(pattern, tmp_path / "cache")
    assert counter.clips == 10  # nothing decoded
    assert isinstance(second.frames, np.memmap)
    assert second.fingerprint == first.fingerprint
    assert (tmp_path / "cache" / first.fingerprint / cache.FRAMES_FILE).stat().st_mtime_ns == built
    assert_matches(second, clips)
    assert entries(tmp_path / "cache") == [first.fingerprint]


def test_decoding_warns_through_logging(tmp_path, caplog):
    pattern = write_shards(tmp_path / "data", make_clips(3))
    with caplog.at_level(logging.INFO, logger="datasets.cache"):
        load_features(pattern, tmp_path / "cache")
    assert any(
        r.levelno == logging.WARNING and "decoding 1 TFRecord" in r.message for r in caplog.records
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="datasets.cache"):
        load_features(pattern, tmp_path / "cache")
    assert not caplog.records


def test_changed_source_rebuilds_and_drops_the_outdated_cache(tmp_path, monkeypatch):
    pattern = write_shards(tmp_path / "data", make_clips(6, seed=1))
    old = load_features(pattern, tmp_path / "cache")
    changed = make_clips(6, seed=2)
    records.write_clips(tmp_path / "data" / "part-001.tfrecord", changed[4:], pad_to=12)
    counter = DecodeCounter(monkeypatch)
    new = load_features(pattern, tmp_path / "cache")
    assert counter.clips == 6
    assert new.fingerprint != old.fingerprint
    assert_matches(new, make_clips(6, seed=1)[:4] + changed[4:])
    assert entries(tmp_path / "cache") == [new.fingerprint]
    # the old FeatureSet still reads: its memmap outlives the deleted files
    assert old.frames.shape[0] == old.offsets[-1]


def test_fingerprint_depends_on_sizes_mtimes_and_paths(tmp_path):
    a = tmp_path / "a.tfrecord"
    a.write_bytes(b"x" * 10)
    before = cache.source_fingerprint([str(a)])
    assert cache.source_fingerprint([str(a)]) == before
    os.utime(a, ns=(1, 1))
    assert cache.source_fingerprint([str(a)]) != before
    b = tmp_path / "b.tfrecord"
    b.write_bytes(b"x" * 10)
    os.utime(b, ns=(1, 1))
    assert cache.source_fingerprint([str(b)]) != cache.source_fingerprint([str(a)])


def test_shard_rewritten_in_place_with_same_size_and_mtime_is_decoded_again(tmp_path):
    """A copy that keeps times (cp -p, rsync -t) over a same-size shard is not served stale."""
    pattern = write_shards(tmp_path / "data", make_clips(8, seed=1))
    shard = tmp_path / "data" / "part-001.tfrecord"
    old = load_features(pattern, tmp_path / "cache")
    before = shard.stat()
    changed = make_clips(8, seed=1)
    # Same lengths and dims as before, other values: the rewritten shard has the same size.
    changed[5] = Clip(changed[5].filename, changed[5].text, 25.0, 3, changed[5].features + 1)
    records.write_clips(shard, changed[4:], pad_to=12)
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (shard.stat().st_size, shard.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    new = load_features(pattern, tmp_path / "cache")
    assert new.fingerprint != old.fingerprint
    assert_matches(new, changed)


@pytest.mark.parametrize("compress", [False, True])
def test_framing_digest_changes_with_a_record_in_the_middle_of_the_shard(tmp_path, compress):
    # Records of ~100 KB: the changed one lies beyond any first or last block of 64 KiB.
    clips = make_clips(5, dim=2048, seed=3)
    path = tmp_path / "s.tfrecord"
    records.write_clips(path, clips, pad_to=12, compress=compress)
    before = records.framing_digest(str(path))
    assert records.framing_digest(str(path)) == before
    clips[2] = Clip(clips[2].filename, clips[2].text, 25.0, 3, clips[2].features * 2)
    records.write_clips(path, clips, pad_to=12, compress=compress)
    assert records.framing_digest(str(path)) != before


def test_framing_digest_of_a_file_that_is_not_a_tfrecord_hashes_its_blocks(tmp_path):
    path = tmp_path / "s.tfrecord"
    path.write_bytes(b"not a tfrecord" * 10)
    before = records.framing_digest(str(path))
    path.write_bytes(b"not a tfrecorD" * 10)
    assert records.framing_digest(str(path)) != before


@pytest.mark.parametrize("value", [70000.0, -1e9, np.inf, np.nan])
def test_values_beyond_fp16_range_are_a_data_error(tmp_path, value):
    clips = make_clips(3)
    clips[2].features[1, 3] = value
    pattern = write_shards(tmp_path / "data", clips)
    with pytest.raises(DataError, match=r"part-000.tfrecord: record 2 .*float16"):
        load_features(pattern, tmp_path / "cache")
    assert entries(tmp_path / "cache") == []  # no cache, no temp folder left


def test_largest_fp16_value_is_kept(tmp_path):
    clips = make_clips(2)
    clips[0].features[0, 0] = 65504.0
    clips[0].features[0, 1] = -65519.0  # rounds to -65504
    fs = load_features(write_shards(tmp_path / "data", clips), tmp_path / "cache")
    assert fs.frames[0, 0] == 65504 and fs.frames[0, 1] == -65504


def test_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    clips = make_clips(5)
    pattern = write_shards(tmp_path / "data", clips)
    fs = load_features(pattern, tmp_path / "cache")
    (tmp_path / "cache" / fs.fingerprint / cache.META_FILE).unlink()
    counter = DecodeCounter(monkeypatch)
    assert_matches(load_features(pattern, tmp_path / "cache"), clips)
    assert counter.clips == 5


def test_temp_folder_of_a_dead_builder_is_removed(tmp_path):
    pattern = write_shards(tmp_path / "data", make_clips(2))
    root = tmp_path / "cache"
    proc = multiprocessing.get_context("spawn").Process(target=int)
    proc.start()
    proc.join()
    dead = root / f".build-{proc.pid}@{socket.gethostname()}@abc123"
    alive = root / f".build-{os.getpid()}@{socket.gethostname()}@def456"
    dead.mkdir(parents=True)
    alive.mkdir()
    load_features(pattern, root)
    assert not dead.exists()
    assert alive.exists()  # a live builder's folder is left alone


def test_no_shards_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no TFRecord files match"):
        load_features(str(tmp_path / "nothing-*.tfrecord"), tmp_path / "cache")


def _racing_build(pattern: str, cache_dir: str, barrier: str, lock: bool) -> tuple[str, int, float]:
    """Child process: decode slowly, meeting the other child inside decoding, then load."""
    real = records.read_clips
    decoded = 0

    def slow(paths):
        nonlocal decoded
        Path(barrier, str(os.getpid())).touch()
        deadline = time.monotonic() + (20 if not lock else 0.5)
        while len(os.listdir(barrier)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        for clip in real(paths):
            decoded += 1
            yield clip

    records.read_clips = slow
    if not lock:  # as on hosts that share the folder but not the lock (network file system)
        cache._build_lock = lambda root, fingerprint: contextlib.nullcontext()
    fs = load_features(pattern, cache_dir)
    return fs.fingerprint, decoded, float(np.asarray(fs.frames, dtype=np.float64).sum())


def race(tmp_path, lock: bool) -> list[tuple[str, int, float]]:
    clips = make_clips(8)
    pattern = write_shards(tmp_path / "data", clips)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    args = (pattern, str(tmp_path / "cache"), str(barrier), lock)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.starmap(_racing_build, [args, args])
    assert results[0][0] == results[1][0] and results[0][2] == results[1][2]
    assert entries(tmp_path / "cache") == [results[0][0]]  # one cache, no temp folders
    assert_matches(load_features(pattern, tmp_path / "cache"), clips)
    return results


def test_two_hosts_building_at_once_leave_one_good_cache(tmp_path):
    results = race(tmp_path, lock=False)
    assert [r[1] for r in results] == [8, 8]  # both really decoded at the same time


def test_second_process_on_a_machine_waits_for_the_first_build(tmp_path):
    results = race(tmp_path, lock=True)
    assert sorted(r[1] for r in results) == [0, 8]  # only one decoded
