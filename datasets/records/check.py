"""Record checks: turn a parsed record into a Clip, or a DataError naming the file and record."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from datasets.errors import DataError
from datasets.records.clip import CONTEXT_KEYS, LIST_KEYS, Clip
from datasets.records.framing import _iter_records, find_shards
from datasets.records.wire import _Buf, _parse_fast, _parse_proto, _Parsed, _Unusual
from datasets.ucf101 import NUM_CLASSES

log = logging.getLogger(__name__)


def _one(parsed: _Parsed, key: str, kind: str, where: str) -> Any:
    if key not in parsed.context:
        raise DataError(
            f"{where}: context has no {key!r}; every record needs context keys "
            f"{', '.join(CONTEXT_KEYS)} (the README's data contract); re-write the shard"
        )
    got, values = parsed.context[key]
    if got != kind or len(values) != 1:
        what = f"{len(values)} values" if got == kind else (got or "no value")
        raise DataError(
            f"{where}: context {key!r} holds {what}, expected one {kind} value; "
            "re-write the shard in the documented format"
        )
    return values[0]


def _text(value: bytes, key: str, where: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{where}: context {key!r} is not UTF-8 text: {value[:40]!r}") from None


class _DimCheck:
    """Remembers the first record's feature size so later records can be compared with it."""

    def __init__(self) -> None:
        self.dim: int | None = None
        self.where = ""

    def check(self, dim: int, where: str) -> None:
        if self.dim is None:
            self.dim, self.where = dim, where
        elif dim != self.dim:
            raise DataError(
                f"{where}: frames have {dim} features but {self.where} has {self.dim}; all "
                "clips of a data set need one feature size, re-extract or drop this shard"
            )


def _check_padding(labels: Any, length: int, filename: str, where: str) -> None:
    """Refuse a record whose frames past sequence_length are not all padding (one label 0).

    Only the label is checked, not that the features are zero: label 0 is the contract's own
    padding marker, and a real frame cut off by a wrong sequence_length carries its class id
    1..101, so one integer per frame catches it. Proving the features zero would read every
    dropped float, as much as decoding them, for writers that pad with zeros anyway.
    """
    if isinstance(labels, np.ndarray):  # (stored, 1) from the fast path
        bad = np.flatnonzero(labels[length:, 0] != 0)
        if not bad.size:
            return
        i = length + int(bad[0])
        found = f"label {int(labels[i, 0])}"
    else:
        i = next((j for j in range(length, len(labels)) if list(labels[j]) != [0]), -1)
        if i < 0:
            return
        found = f"labels {list(labels[i])}"
    raise DataError(
        f"{where}: clip {filename!r} has sequence_length {length} but stored frame {i} past it "
        f"holds {found}, not the padding label 0; fix sequence_length (or the labels) and "
        "re-write the shard"
    )


def _to_clip(parsed: _Parsed, where: str, dims: _DimCheck) -> Clip:
    length = _one(parsed, "sequence_length", "int64_list", where)
    filename = _text(_one(parsed, "filename", "bytes_list", where), "filename", where)
    text = _text(_one(parsed, "text", "bytes_list", where), "text", where)
    fps = float(_one(parsed, "fps", "float_list", where))
    for key in LIST_KEYS:
        if key not in parsed.lists:
            raise DataError(
                f"{where}: feature_lists has no {key!r}; every record needs feature_lists "
                f"{', '.join(LIST_KEYS)} (the README's data contract); re-write the shard"
            )
    _, frames = parsed.lists["features"]
    _, labels = parsed.lists["labels"]
    stored = len(frames)
    if length < 1 or length > stored:
        raise DataError(
            f"{where}: sequence_length is {length} but {stored} frames are stored (need "
            f"1..{stored}); fix the writer or re-write the shard"
        )
    if len(labels) != stored:
        raise DataError(
            f"{where}: {stored} feature frames but {len(labels)} label frames; both lists "
            "need one entry per frame, re-write the shard"
        )
    if isinstance(frames, np.ndarray):  # (stored, 4 * dim) uint8 rows from the fast path
        raw = np.array(frames[:length], copy=True)  # always a copy: frames views a reused buffer
        features = raw.view("<f4").astype(np.float32, copy=False).reshape(length, raw.shape[1] // 4)
    else:
        sizes = [len(f) for f in frames]
        for i, size in enumerate(sizes):
            if size != sizes[0]:
                raise DataError(
                    f"{where}: frame {i} has {size} features but frame 0 has {sizes[0]}; all "
                    "frames need one feature size, re-extract this clip"
                )
        features = np.array(np.stack(frames[:length]), dtype=np.float32).reshape(length, sizes[0])
    if features.shape[1] == 0:
        raise DataError(f"{where}: frames hold no feature values; re-extract this clip")
    dims.check(features.shape[1], where)
    if not isinstance(labels, np.ndarray):  # (frames, 1) when the fast path read them
        for i, frame_labels in enumerate(labels[:length]):
            if len(frame_labels) != 1:
                raise DataError(
                    f"{where}: frame {i} has {len(frame_labels)} labels, expected exactly one; "
                    "re-write the shard"
                )
        real = np.array([lab[0] for lab in labels[:length]], dtype=np.int64)
    else:
        real = labels[:length, 0]
    _check_padding(labels, length, filename, where)
    label = int(real[0])
    if not 1 <= label <= NUM_CLASSES:
        raise DataError(
            f"{where}: label {label} of clip {filename!r} is outside 1..{NUM_CLASSES} (0 is "
            "only for padding frames); fix the labels and re-write the shard"
        )
    mixed = np.flatnonzero(real != label)
    if mixed.size:
        i = int(mixed[0])
        raise DataError(
            f"{where}: clip {filename!r} mixes labels in its real frames (frame 0 is {label}, "
            f"frame {i} is {int(real[i])}); one clip needs one label, fix and re-write the shard"
        )
    return Clip(filename=filename, text=text, fps=fps, label=label, features=features)


def _decode(buf: _Buf, size: int, where: str, dims: _DimCheck) -> Clip:
    """Return the checked clip in buf[:size]; nothing returned refers to buf."""
    try:
        parsed = _parse_fast(buf, size)
    except _Unusual:
        log.debug("%s: unusual encoding, parsing with protobuf", where)
        with memoryview(buf)[:size] as record:
            parsed = _parse_proto(bytes(record), where)
    return _to_clip(parsed, where, dims)


def read_clips(pattern: str | os.PathLike[str] | Sequence[str]) -> Iterator[Clip]:
    """Yield every clip of the shards matching a glob (or a list of paths), checking each record."""
    if isinstance(pattern, (str, os.PathLike)):
        paths = find_shards(str(pattern))
    else:
        paths = [str(p) for p in pattern]
        if not paths:
            raise DataError("no TFRecord files given; pass a glob pattern or a list of paths")
    dims = _DimCheck()
    count = 0
    for path in paths:
        for index, buffer, length in _iter_records(path):
            where = f"{path}: record {index} (0-based)"
            yield _decode(buffer, length, where, dims)
            count += 1
    if count == 0:
        raise DataError(
            f"{len(paths)} TFRecord file(s) ({paths[0]}, ...) hold no records; "
            "point at shards that contain clips"
        )


def parse_record(data: bytes) -> Clip:
    """Return the clip in one serialized SequenceExample (checked like read_clips does)."""
    return _decode(data, len(data), "record", _DimCheck())


def parse_record_with_protobuf(data: bytes) -> Clip:
    """Return the clip in one SequenceExample parsed by the protobuf classes (slow reference)."""
    return _to_clip(_parse_proto(bytes(data), "record"), "record", _DimCheck())
