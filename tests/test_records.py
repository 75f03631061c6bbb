"""TFRecord shards: bit-exact round trips, every corrupt-input error, fast parser == protobuf."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import crc32c
import numpy as np
import pytest
from tfrecord import example_pb2

from datasets.records import (
    Clip,
    encode_clip,
    find_shards,
    parse_record,
    parse_record_with_protobuf,
    read_clips,
    write_clips,
)
from datasets.ucf101 import CLASS_NAMES, clip_filename


def make_clips(n: int, dim: int = 16, seed: int = 0, max_len: int = 250) -> list[Clip]:
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(n):
        label = int(rng.integers(1, 102))
        length = int(rng.integers(1, max_len + 1))
        # Full float32 range incl. subnormals, -0.0 and huge values: a bit-exact test needs them.
        bits = rng.integers(0, 2**32, size=(length, dim), dtype=np.uint64).astype(np.uint32)
        features = bits.view(np.float32)
        features[~np.isfinite(features)] = -0.0
        clips.append(
            Clip(
                filename=clip_filename(CLASS_NAMES[label - 1], i % 25 + 1, i % 7 + 1),
                text=CLASS_NAMES[label - 1],
                fps=float(np.float32(25.0 if i % 2 else 29.97)),
                label=label,
                features=features,
            )
        )
    return clips


def assert_same(written: list[Clip], read: list[Clip]) -> None:
    assert len(read) == len(written)
    for a, b in zip(written, read, strict=True):
        assert (b.filename, b.text, b.label, b.fps) == (a.filename, a.text, a.label, a.fps)
        assert b.features.dtype == np.float32
        assert b.features.shape == a.features.shape
        assert b.sequence_length == a.features.shape[0]
        # Compare bits, not values: -0.0 == 0.0 would hide a sign flip.
        assert np.array_equal(b.features.view(np.uint32), a.features.view(np.uint32))


def framed(record: bytes) -> bytes:
    def mask(c: int) -> int:
        return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    head = struct.pack("<Q", len(record))
    return (
        head
        + struct.pack("<I", mask(crc32c.crc32c(head)))
        + record
        + struct.pack("<I", mask(crc32c.crc32c(record)))
    )


@pytest.mark.parametrize("pad_to", [250, None])
@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dim", [16, 2048])
def test_round_trip_is_bit_exact(tmp_path: Path, pad_to: int | None, compress: bool, dim: int):
    clips = make_clips(4 if dim == 2048 else 12, dim=dim)
    path = tmp_path / "shard.tfrecord"
    size = write_clips(path, clips, pad_to=pad_to, compress=compress)
    assert size == path.stat().st_size
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    assert_same(clips, list(read_clips(str(path))))


def test_gzip_is_detected_by_magic_bytes_not_by_name(tmp_path: Path):
    clips = make_clips(3)
    write_clips(tmp_path / "plain.gz", clips, compress=False)
    write_clips(tmp_path / "packed.tfrecord", clips, compress=True)
    assert_same(clips, list(read_clips(str(tmp_path / "plain.gz"))))
    assert_same(clips, list(read_clips(str(tmp_path / "packed.tfrecord"))))


def test_padding_is_zeros_with_label_zero_and_sequence_length_counts_real_frames():
    clip = make_clips(1, max_len=100)[0]
    example = example_pb2.SequenceExample.FromString(encode_clip(clip, pad_to=250))
    assert example.context.feature["sequence_length"].int64_list.value == [clip.sequence_length]
    frames = example.feature_lists.feature_list["features"].feature
    labels = example.feature_lists.feature_list["labels"].feature
    assert len(frames) == len(labels) == 250
    n = clip.sequence_length
    assert [f.int64_list.value[0] for f in labels] == [clip.label] * n + [0] * (250 - n)
    assert all(list(f.float_list.value) == [0.0] * 16 for f in frames[n:])


def test_writer_output_equals_protobuf_deterministic_serialization():
    for clip in make_clips(3):
        for pad_to in (250, None):
            record = encode_clip(clip, pad_to=pad_to)
            example = example_pb2.SequenceExample.FromString(record)
            assert example.SerializeToString(deterministic=True) == record


def test_reads_several_shards_in_sorted_order(tmp_path: Path):
    clips = make_clips(6)
    write_clips(tmp_path / "b.tfrecord", clips[3:])
    write_clips(tmp_path / "a.tfrecord", clips[:3], compress=True)
    assert find_shards(str(tmp_path / "*")) == [
        str(tmp_path / "a.tfrecord"),
        str(tmp_path / "b.tfrecord"),
    ]
    assert_same(clips, list(read_clips(str(tmp_path / "*.tfrecord"))))
    assert_same(clips[3:], list(read_clips([str(tmp_path / "b.tfrecord")])))


def test_fast_parser_agrees_with_protobuf():
    for clip in make_clips(5):
        for pad_to in (250, None):
            record = encode_clip(clip, pad_to=pad_to)
            assert_same([parse_record_with_protobuf(record)], [parse_record(record)])


def test_write_is_atomic_and_leaves_no_temp_file(tmp_path: Path):
    path = tmp_path / "shard.tfrecord"
    write_clips(path, make_clips(2))

    def failing():
        yield from make_clips(2, seed=1)
        raise RuntimeError("writer crashed")

    with pytest.raises(RuntimeError):
        write_clips(path, failing())
    assert [p.name for p in tmp_path.iterdir()] == ["shard.tfrecord"]
    assert_same(make_clips(2), list(read_clips(str(path))))


def test_gzip_shard_is_standard_gzip(tmp_path: Path):
    clips = make_clips(2)
    write_clips(tmp_path / "z", clips, compress=True)
    write_clips(tmp_path / "p", clips, compress=False)
    assert gzip.decompress((tmp_path / "z").read_bytes()) == (tmp_path / "p").read_bytes()
    assert (
        framed(encode_clip(clips[0]))
        == (tmp_path / "p").read_bytes()[: len(framed(encode_clip(clips[0])))]
    )
