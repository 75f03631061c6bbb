"""TFRecord shards: bit-exact round trips, every corrupt-input error, fast parser == protobuf."""

from __future__ import annotations

import gzip
import json
import re
import struct
import zlib
from pathlib import Path

import crc32c
import numpy as np
import pytest
from tfrecord import example_pb2

from datasets.errors import DataError
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

FIXTURES = Path(__file__).parent / "fixtures"


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


# --------------------------------------------------------------- TensorFlow-written shards


def test_reads_shards_written_by_tensorflow_exactly():
    expected = json.loads((FIXTURES / "tf_expected.json").read_text())
    for name, records in expected["files"].items():
        clips = list(read_clips(str(FIXTURES / name)))
        assert len(clips) == len(records)
        for clip, want in zip(clips, records, strict=True):
            assert (clip.filename, clip.text, clip.label, clip.fps) == (
                want["filename"],
                want["text"],
                want["label"],
                want["fps"],
            )
            assert clip.sequence_length == want["sequence_length"]
            features = np.array(want["features"], dtype=np.float32)
            assert np.array_equal(clip.features.view(np.uint32), features.view(np.uint32))
    assert (FIXTURES / "tf_gzip.tfrecord").read_bytes()[:2] == b"\x1f\x8b"


def test_fast_parser_agrees_with_protobuf_on_tensorflow_records():
    for name in ("tf_plain.tfrecord", "tf_gzip.tfrecord"):
        raw = (FIXTURES / name).read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        pos = 0
        while pos < len(raw):
            (length,) = struct.unpack("<Q", raw[pos : pos + 8])
            record = raw[pos + 12 : pos + 12 + length]
            assert_same([parse_record_with_protobuf(record)], [parse_record(record)])
            pos += 16 + length


# ------------------------------------------------------------------- corrupt input


def record_offsets(data: bytes) -> list[int]:
    """Byte offset of each record in an uncompressed shard."""
    offsets, pos = [], 0
    while pos < len(data):
        offsets.append(pos)
        pos += 16 + struct.unpack("<Q", data[pos : pos + 8])[0]
    return offsets


def error_at(path: Path, index: int) -> str:
    return re.escape(f"{path}: record {index} (0-based")


def write_records(path: Path, records: list[bytes]) -> Path:
    path.write_bytes(b"".join(framed(r) for r in records))
    return path


def example_of(clip: Clip, pad_to: int | None = None) -> example_pb2.SequenceExample:
    return example_pb2.SequenceExample.FromString(encode_clip(clip, pad_to=pad_to))


def test_flipped_data_byte_is_a_crc_error_naming_file_and_record(tmp_path: Path):
    path = tmp_path / "shard.tfrecord"
    write_clips(path, make_clips(3))
    data = bytearray(path.read_bytes())
    data[record_offsets(bytes(data))[1] + 12 + 100] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=error_at(path, 1) + r".*bad CRC of the record data"):
        list(read_clips(str(path)))


def test_flipped_length_byte_is_a_length_crc_error(tmp_path: Path):
    path = tmp_path / "shard.tfrecord"
    write_clips(path, make_clips(3))
    data = bytearray(path.read_bytes())
    data[record_offsets(bytes(data))[2] + 1] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=error_at(path, 2) + r".*bad CRC of the record length"):
        list(read_clips(str(path)))


@pytest.mark.parametrize("cut", [5, 200])
def test_file_cut_short_is_truncated_error(tmp_path: Path, cut: int):
    path = tmp_path / "shard.tfrecord"
    write_clips(path, make_clips(3))
    data = path.read_bytes()
    start = record_offsets(data)[2]
    path.write_bytes(data[: start + cut])
    with pytest.raises(DataError, match=error_at(path, 2) + r".*truncated"):
        list(read_clips(str(path)))


def test_truncated_gzip_shard_is_a_data_error(tmp_path: Path):
    path = tmp_path / "shard.tfrecord"
    write_clips(path, make_clips(4, seed=3), compress=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(
        DataError, match=re.escape(str(path)) + r": record \d .*truncated or corrupt"
    ):
        list(read_clips(str(path)))


def test_corrupt_gzip_bytes_are_a_data_error(tmp_path: Path):
    path = tmp_path / "shard.tfrecord"
    write_clips(path, make_clips(4, seed=3), compress=True)
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=re.escape(str(path)) + r": record \d"):
        list(read_clips(str(path)))


def test_zlib_file_gets_a_hint_and_corrupt_huge_length_allocates_nothing(tmp_path: Path):
    (tmp_path / "z").write_bytes(zlib.compress(framed(encode_clip(make_clips(1)[0]))))
    with pytest.raises(DataError, match="starts like a ZLIB stream"):
        list(read_clips(str(tmp_path / "z")))
    head = struct.pack("<Q", 1 << 50)  # a length with a valid CRC, claiming a petabyte
    length_crc = framed(head)[-4:]  # masked CRC of exactly these 8 bytes
    (tmp_path / "h").write_bytes(head + length_crc + b"x" * 100)
    with pytest.raises(DataError, match="truncated"):
        list(read_clips(str(tmp_path / "h")))


def test_empty_glob_is_a_data_error(tmp_path: Path):
    with pytest.raises(DataError, match="no TFRecord files match"):
        find_shards(str(tmp_path / "*.tfrecord"))
    with pytest.raises(DataError, match="is a folder"):
        list(read_clips(str(tmp_path)))


def test_files_without_records_are_a_data_error(tmp_path: Path):
    (tmp_path / "empty.tfrecord").write_bytes(b"")
    with pytest.raises(DataError, match="hold no records"):
        list(read_clips(str(tmp_path / "*")))


def test_missing_file_in_explicit_list_is_a_data_error(tmp_path: Path):
    with pytest.raises(DataError, match="cannot open TFRecord file"):
        list(read_clips([str(tmp_path / "nope.tfrecord")]))


@pytest.mark.parametrize(
    ("part", "key", "message"),
    [
        ("context", "fps", "context has no 'fps'"),
        ("context", "sequence_length", "context has no 'sequence_length'"),
        ("context", "filename", "context has no 'filename'"),
        ("lists", "labels", "feature_lists has no 'labels'"),
        ("lists", "features", "feature_lists has no 'features'"),
    ],
)
def test_missing_key_is_named(tmp_path: Path, part: str, key: str, message: str):
    clips = make_clips(2)
    example = example_of(clips[1])
    if part == "context":
        del example.context.feature[key]
    else:
        del example.feature_lists.feature_list[key]
    path = write_records(tmp_path / "s", [encode_clip(clips[0]), example.SerializeToString()])
    with pytest.raises(DataError, match=error_at(path, 1) + ".*" + re.escape(message)):
        list(read_clips(str(path)))


def test_sequence_length_beyond_stored_frames_is_an_error(tmp_path: Path):
    clip = make_clips(1, max_len=40)[0]
    example = example_of(clip)
    example.context.feature["sequence_length"].int64_list.value[0] = clip.sequence_length + 1
    path = write_records(tmp_path / "s", [example.SerializeToString()])
    with pytest.raises(DataError, match=error_at(path, 0) + ".*sequence_length is"):
        list(read_clips(str(path)))


@pytest.mark.parametrize("pad_to", [None, 60])
def test_real_frames_past_sequence_length_are_refused_naming_file_and_record(
    tmp_path: Path, pad_to: int | None
):
    clips = make_clips(2, max_len=40)
    example = example_of(clips[1], pad_to=pad_to)
    cut = clips[1].sequence_length - 1  # the last real frame now lies past sequence_length
    example.context.feature["sequence_length"].int64_list.value[0] = cut
    record = example.SerializeToString()
    path = write_records(tmp_path / "s", [encode_clip(clips[0]), record])
    message = f"sequence_length {cut} but stored frame {cut} past it holds label {clips[1].label}"
    with pytest.raises(DataError, match=error_at(path, 1) + ".*" + re.escape(message)):
        list(read_clips(str(path)))
    with pytest.raises(DataError, match=re.escape(f"stored frame {cut} past it holds labels")):
        parse_record_with_protobuf(record)


def test_frame_past_sequence_length_without_a_label_is_refused_by_the_fallback(tmp_path: Path):
    example = example_of(make_clips(1, max_len=40)[0], pad_to=50)
    del example.feature_lists.feature_list["labels"].feature[45].int64_list.value[:]
    path = write_records(tmp_path / "s", [example.SerializeToString()])
    with pytest.raises(
        DataError, match=error_at(path, 0) + ".*frame 45 past it holds labels \\[\\]"
    ):
        list(read_clips(str(path)))


def test_padding_past_sequence_length_with_label_zero_is_dropped(tmp_path: Path):
    clip = make_clips(1, max_len=40)[0]
    example = example_of(clip, pad_to=50)
    # Padding whose features are not zero is still padding: label 0 is the marker.
    example.feature_lists.feature_list["features"].feature[45].float_list.value[0] = 3.0
    path = write_records(tmp_path / "s", [example.SerializeToString()])
    assert_same([clip], list(read_clips(str(path))))


@pytest.mark.parametrize("bad", [0, 102, -1])
def test_label_out_of_range_is_an_error(tmp_path: Path, bad: int):
    example = example_of(make_clips(1)[0])
    for frame in example.feature_lists.feature_list["labels"].feature:
        frame.int64_list.value[0] = bad
    path = write_records(tmp_path / "s", [example.SerializeToString()])
    with pytest.raises(DataError, match=error_at(path, 0) + f".*label {bad} .*outside 1..101"):
        list(read_clips(str(path)))


def test_mixed_labels_within_real_frames_are_an_error(tmp_path: Path):
    clip = make_clips(1, max_len=40)[0]
    example = example_of(clip, pad_to=250)
    example.feature_lists.feature_list["labels"].feature[3].int64_list.value[0] = (
        clip.label % 101 + 1
    )
    path = write_records(tmp_path / "s", [example.SerializeToString()])
    with pytest.raises(DataError, match=error_at(path, 0) + ".*mixes labels.*frame 3"):
        list(read_clips(str(path)))


def test_feature_size_differing_within_a_record_is_an_error(tmp_path: Path):
    example = example_of(make_clips(1)[0])
    del example.feature_lists.feature_list["features"].feature[4].float_list.value[-1]
    path = write_records(tmp_path / "s", [example.SerializeToString()])
    with pytest.raises(DataError, match=error_at(path, 0) + ".*frame 4 has 15 features"):
        list(read_clips(str(path)))


def test_feature_size_differing_between_records_and_files_is_an_error(tmp_path: Path):
    write_clips(tmp_path / "a", make_clips(2, dim=16))
    write_clips(tmp_path / "b", make_clips(1, dim=8))
    with pytest.raises(DataError, match=error_at(tmp_path / "b", 0) + ".*8 features but .*16"):
        list(read_clips(str(tmp_path / "*")))


def test_features_of_wrong_type_are_an_error(tmp_path: Path):
    example = example_of(make_clips(1)[0])
    frame = example.feature_lists.feature_list["features"].feature[0]
    frame.int64_list.value.extend([1, 2, 3])
    path = write_records(tmp_path / "s", [example.SerializeToString()])
    with pytest.raises(DataError, match=error_at(path, 0) + ".*frame 0 holds int64_list"):
        list(read_clips(str(path)))


def test_context_of_wrong_type_is_an_error(tmp_path: Path):
    example = example_of(make_clips(1)[0])
    example.context.feature["fps"].int64_list.value.append(25)
    path = write_records(tmp_path / "s", [example.SerializeToString()])
    with pytest.raises(DataError, match=error_at(path, 0) + ".*'fps' holds int64_list"):
        list(read_clips(str(path)))


def test_record_that_is_not_a_sequence_example_is_an_error(tmp_path: Path):
    path = write_records(tmp_path / "s", [b"\xff\xff\xff not a protobuf"])
    with pytest.raises(
        DataError, match=error_at(path, 0) + ".*not a valid tf.train.SequenceExample"
    ):
        list(read_clips(str(path)))


# ------------------------------------------------ valid but unusual encodings (fallback)


def tag(field: int, wire: int) -> bytes:
    return bytes([field << 3 | wire])


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field (payloads here are < 128 bytes or use a 2-byte varint)."""
    n = len(payload)
    size = bytes([n]) if n < 128 else bytes([n & 0x7F | 0x80, n >> 7])
    return tag(field, 2) + size + payload


def unusual_record(values: np.ndarray, label: int) -> bytes:
    """feature_lists before context, map value before key, unpacked floats and int64s."""
    frames = b"".join(
        ld(1, ld(2, b"".join(tag(1, 5) + struct.pack("<f", v) for v in row))) for row in values
    )
    labels = b"".join(ld(1, ld(3, tag(1, 0) + bytes([label]))) for _ in values)
    lists = ld(1, ld(2, frames) + ld(1, b"features")) + ld(1, ld(1, b"labels") + ld(2, labels))
    context = b"".join(
        (
            ld(1, ld(2, ld(3, tag(1, 0) + bytes([len(values)]))) + ld(1, b"sequence_length")),
            ld(1, ld(1, b"filename") + ld(2, ld(1, ld(1, b"v_YoYo_g01_c01.avi")))),
            ld(1, ld(1, b"text") + ld(2, ld(1, ld(1, b"YoYo")))),
            ld(1, ld(1, b"fps") + ld(2, ld(2, tag(1, 5) + struct.pack("<f", 25.0)))),
        )
    )
    return ld(2, lists) + ld(1, context)


def test_unusual_but_valid_encoding_is_read_through_protobuf_fallback(tmp_path: Path):
    values = np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5
    record = unusual_record(values, 101)
    path = write_records(tmp_path / "s", [record])
    (clip,) = read_clips(str(path))
    assert (clip.filename, clip.text, clip.label, clip.fps) == (
        "v_YoYo_g01_c01.avi",
        "YoYo",
        101,
        25.0,
    )
    assert np.array_equal(clip.features, values)
    assert_same([parse_record_with_protobuf(record)], [clip])


def test_repeated_context_is_merged_like_protobuf():
    clip = make_clips(1)[0]
    record = encode_clip(clip)
    # A second context message that overrides fps: protobuf merges it, last value wins.
    extra = ld(1, ld(1, ld(1, b"fps") + ld(2, ld(2, ld(1, struct.pack("<f", 12.5))))))
    merged = parse_record(record + extra)
    assert merged.fps == 12.5
    assert_same([parse_record_with_protobuf(record + extra)], [merged])


def test_plain_shard_whose_length_starts_like_gzip_is_read_as_plain(tmp_path: Path):
    clip = make_clips(1, dim=16, max_len=250)[0]
    # Grow the text until the record is exactly 0x8b1f bytes: its first two bytes are 1f 8b.
    base = len(encode_clip(clip))
    clip = Clip(clip.filename, "x" * (0x8B1F - base), clip.fps, clip.label, clip.features)
    size = len(encode_clip(clip))
    clip = Clip(
        clip.filename, "x" * (len(clip.text) - (size - 0x8B1F)), clip.fps, clip.label, clip.features
    )
    assert len(encode_clip(clip)) == 0x8B1F
    path = tmp_path / "s.tfrecord"
    write_clips(path, [clip])
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    assert_same([clip], list(read_clips(str(path))))


def test_fast_parser_and_protobuf_agree_on_mutated_records():
    """Random byte edits (CRC kept valid): both parsers accept the same clip or both refuse."""
    rng = np.random.default_rng(7)
    records = [encode_clip(c, pad_to=p) for c in make_clips(3, dim=4, max_len=6) for p in (8, None)]

    def outcome(parse, record: bytes) -> tuple:
        try:
            clip = parse(record)
        except DataError:
            return ("refused",)
        return (clip.filename, clip.text, clip.label, clip.fps, clip.features.tobytes())

    accepted = 0
    for i in range(1500):
        record = bytearray(records[i % len(records)])
        at = int(rng.integers(0, len(record)))
        edit = i % 3
        if edit == 0:
            record[at] = int(rng.integers(0, 256))
        elif edit == 1:
            del record[at : at + int(rng.integers(1, 5))]
        else:
            record[at:at] = rng.integers(0, 256, int(rng.integers(1, 4)), dtype=np.uint8).tobytes()
        fast = outcome(parse_record, bytes(record))
        assert fast == outcome(parse_record_with_protobuf, bytes(record)), bytes(record).hex()
        accepted += fast != ("refused",)
    assert 0 < accepted < 1500


# ------------------------------------------- structured fuzzing: wire types, varints, nesting


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# A node of a protobuf message tree: (kind, field number, value). kind is "msg" (value: list of
# nodes), "bytes" (length-delimited raw bytes), "varint" (int), "i32"/"i64" (4/8 raw bytes), or
# "raw" (bytes written as they are, with no tag: for cut-short encodings).
Node = tuple[str, int, object]


def encode_tree(nodes: list[Node]) -> bytes:
    out = b""
    for kind, field, value in nodes:
        if kind == "msg":
            payload = encode_tree(value)  # type: ignore[arg-type]
            out += varint(field << 3 | 2) + varint(len(payload)) + payload
        elif kind == "bytes":
            out += varint(field << 3 | 2) + varint(len(value)) + value  # type: ignore[arg-type]
        elif kind == "varint":
            out += varint(field << 3) + varint(value)  # type: ignore[arg-type]
        elif kind in ("i32", "i64"):
            out += varint(field << 3 | (5 if kind == "i32" else 1)) + value  # type: ignore[operator]
        else:
            out += value  # type: ignore[operator]
    return out


def record_tree(frames: list[list[float]], length: int, label: int = 7) -> list[Node]:
    """The tree write_clips encodes: packed values, one Feature per frame, sorted map keys."""

    def feature(kind: int, payload: bytes) -> Node:
        return ("msg", 2, [("msg", kind, [("bytes", 1, payload)])])

    def entry(key: str, value: Node) -> Node:
        return ("msg", 1, [("bytes", 1, key.encode()), value])

    context = [
        entry("filename", feature(1, b"v_YoYo_g01_c01.avi")),
        entry("fps", feature(2, struct.pack("<f", 25.0))),
        entry("sequence_length", feature(3, varint(length))),
        entry("text", feature(1, b"YoYo")),
    ]
    features = [
        ("msg", 1, [("msg", 2, [("bytes", 1, np.asarray(r, "<f4").tobytes())])]) for r in frames
    ]
    labels = [
        ("msg", 1, [("msg", 3, [("bytes", 1, varint(label if i < length else 0))])])
        for i in range(len(frames))
    ]
    lists = [entry("features", ("msg", 2, features)), entry("labels", ("msg", 2, labels))]
    return [("msg", 1, context), ("msg", 2, lists)]


def node_paths(nodes: list[Node], prefix: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    out = []
    for i, (kind, _, value) in enumerate(nodes):
        out.append((*prefix, i))
        if kind == "msg":
            out += node_paths(value, (*prefix, i))  # type: ignore[arg-type]
    return out


def node_at(nodes: list[Node], path: tuple[int, ...]) -> Node:
    node = nodes[path[0]]
    return node if len(path) == 1 else node_at(node[2], path[1:])  # type: ignore[arg-type]


def replaced(nodes: list[Node], path: tuple[int, ...], new: list[Node]) -> list[Node]:
    """Return a copy of nodes with the node at path replaced by the nodes in new."""
    i = path[0]
    if len(path) == 1:
        return nodes[:i] + new + nodes[i + 1 :]
    kind, field, value = nodes[i]
    return [*nodes[:i], (kind, field, replaced(value, path[1:], new)), *nodes[i + 1 :]]  # type: ignore[arg-type]


def mutants(nodes: list[Node]) -> list[tuple[str, bytes]]:
    """Every node given every other wire type, wrapped, unwrapped, doubled, or followed by a cut
    varint (in a key, a varint value, a length, and a length that overruns)."""
    out = []
    for path in node_paths(nodes):
        kind, field, value = node_at(nodes, path)
        others: list[Node] = [
            ("varint", field, 5),
            ("varint", field, 1 << 63),
            ("i32", field, struct.pack("<f", 25.0)),
            ("i64", field, bytes(8)),
            ("bytes", field, b"\x08\x01"),  # what a message holding varint field 1 = 1 looks like
            ("msg", field, []),
        ]
        for other in others:
            if other[0] != kind:
                out.append((f"{path} {kind} -> {other[0]}", replaced(nodes, path, [other])))
        if kind == "bytes":  # a packed run (or a string) that ends in a cut varint
            cut_run: Node = ("bytes", field, value + b"\x80")  # type: ignore[operator]
            out.append((f"{path} payload then 80", replaced(nodes, path, [cut_run])))
        out.append(
            (f"{path} wrapped", replaced(nodes, path, [("msg", field, [node_at(nodes, path)])]))
        )
        if kind == "msg":
            out.append((f"{path} unwrapped", replaced(nodes, path, value)))  # type: ignore[arg-type]
        out.append((f"{path} doubled", replaced(nodes, path, [node_at(nodes, path)] * 2)))
        for cut in (b"\x80", varint(field << 3) + b"\xff", varint(field << 3 | 2) + b"\x85"):
            out.append(
                (
                    f"{path} then {cut.hex()}",
                    replaced(nodes, path, [node_at(nodes, path), ("raw", 0, cut)]),
                )
            )
        overrun = varint(field << 3 | 2) + b"\x05ab"
        out.append(
            (
                f"{path} then overrun",
                replaced(nodes, path, [node_at(nodes, path), ("raw", 0, overrun)]),
            )
        )
    return [(name, encode_tree(tree)) for name, tree in out]


def parse_outcome(parse, record: bytes) -> tuple:
    try:
        clip = parse(record)
    except DataError:
        return ("refused",)
    return (clip.filename, clip.text, clip.label, clip.fps, clip.features.tobytes())


def test_bytes_list_value_of_wrong_wire_type_reads_as_protobuf_reads_it():
    tree = record_tree([[1.0, 2.0], [3.0, 4.0]], 2)
    # context entry 0 is 'filename': its BytesList's value becomes a varint.
    path = (0, 0, 1, 0, 0)
    assert node_at(tree, path) == ("bytes", 1, b"v_YoYo_g01_c01.avi")
    record = encode_tree(replaced(tree, path, [("varint", 1, 5)]))
    assert parse_outcome(parse_record, record) == parse_outcome(parse_record_with_protobuf, record)


def test_fast_parser_and_protobuf_agree_on_wrong_wire_types_cut_varints_and_nesting():
    """Every node of a record (padded and unpadded) mutated every structural way: one verdict."""
    cases = mutants(record_tree([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]], 2))
    cases += mutants(record_tree([[1.0, 2.0], [3.0, 4.0]], 2))
    accepted = 0
    for name, record in cases:
        fast = parse_outcome(parse_record, record)
        assert fast == parse_outcome(parse_record_with_protobuf, record), name
        accepted += fast != ("refused",)
    # Some mutants stay valid (unknown fields skipped, a doubled map entry): both paths run.
    assert 0 < accepted < len(cases)
