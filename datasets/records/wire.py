"""The SequenceExample wire format: a fast strided parser, and the protobuf fallback."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from datasets.errors import DataError
from datasets.records.clip import CONTEXT_KEYS

_Buf = bytes | bytearray


_LEN, _VARINT, _I64, _I32 = 2, 0, 1, 5


_KINDS = {1: "bytes_list", 2: "float_list", 3: "int64_list"}


_FLOAT, _INT64, _BYTES = 2, 3, 1


class _Unusual(Exception):
    """An encoding the fast parser does not handle; the protobuf fallback reads it."""


def _varint(buf: _Buf, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise _Unusual
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if result >> 64:
                raise _Unusual  # over 64 bits: protobuf calls it corrupt, so let it say so
            return result, pos
        shift += 7
        if shift >= 70:
            raise _Unusual


def _fields(buf: _Buf, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield (field number, wire type, start, end) of each field in buf[pos:end].

    Anything protobuf would reject (field 0, groups, overruns) raises _Unusual, so that the
    protobuf fallback gives the verdict: the fast path never accepts what protobuf rejects.
    """
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0 or key >> 32:
            raise _Unusual
        if wire == _LEN:
            n, pos = _varint(buf, pos, end)
            start = pos
        elif wire == _VARINT:
            start = pos
            _, pos = _varint(buf, pos, end)
            n = 0
        elif wire in (_I32, _I64):
            start, n = pos, 4 if wire == _I32 else 8
        else:
            raise _Unusual
        pos += n
        if pos > end:
            raise _Unusual
        yield field, wire, start, pos


def _map(buf: _Buf, start: int, end: int, out: dict[str, tuple[int, int]]) -> None:
    """Add the entries of a map<string, message> (Features / FeatureLists) to out."""
    for field, wire, a, b in _fields(buf, start, end):
        if field != 1:
            continue  # an unknown field: protobuf would skip it too
        if wire != _LEN:
            raise _Unusual
        key, value = "", (b, b)
        has_key = has_value = False
        for f2, w2, a2, b2 in _fields(buf, a, b):
            if f2 == 1 and w2 == _LEN and not has_key:
                try:
                    key, has_key = bytes(buf[a2:b2]).decode("utf-8"), True
                except UnicodeDecodeError:
                    raise _Unusual from None  # protobuf rejects non-UTF-8 string keys
            elif f2 == 2 and w2 == _LEN and not has_value:
                value, has_value = (a2, b2), True
            else:
                raise _Unusual
        out[key] = value  # a later entry with the same key wins, as in protobuf


def _feature(buf: _Buf, start: int, end: int) -> tuple[int | None, int, int]:
    """Return (kind, start, end) of the one *_list in a Feature message; kind None if empty."""
    found: tuple[int | None, int, int] = (None, end, end)
    for field, wire, a, b in _fields(buf, start, end):
        if wire != _LEN or field not in _KINDS or found[0] is not None:
            raise _Unusual
        found = (field, a, b)
    return found


def _packed(buf: _Buf, start: int, end: int) -> tuple[int, int]:
    """Return the (start, end) of the single packed run of a Float/Int64/BytesList's values."""
    run = (end, end)
    for field, wire, a, b in _fields(buf, start, end):
        if field != 1 or wire != _LEN or run[0] != end:
            raise _Unusual
        run = (a, b)
    return run


def _int64s(buf: _Buf, start: int, end: int) -> list[int]:
    values = []
    pos = start
    while pos < end:
        v, pos = _varint(buf, pos, end)
        values.append(v - (1 << 64) if v >= 1 << 63 else v)
    return values


def _context_value(buf: _Buf, start: int, end: int) -> tuple[str | None, list[Any]]:
    kind, a, b = _feature(buf, start, end)
    if kind is None:
        return None, []
    if kind == _BYTES:
        values = []
        for field, wire, x, y in _fields(buf, a, b):
            if field == 1 and wire != _LEN:
                # protobuf keeps a value of the wrong wire type as an unknown field, so the
                # list would be shorter than the bytes suggest: leave the verdict to it.
                raise _Unusual
            if field == 1:
                values.append(bytes(buf[x:y]))
        return "bytes_list", values
    a, b = _packed(buf, a, b)
    if kind == _FLOAT:
        if (b - a) % 4:
            raise _Unusual
        return "float_list", np.frombuffer(buf, "<f4", (b - a) // 4, a).tolist()
    return "int64_list", _int64s(buf, a, b)


def _frames(buf: _Buf, start: int, end: int, want: int) -> tuple[str | None, Any]:
    """Decode a FeatureList whose frames are float_list (want=2) or int64_list (want=3).

    Returns (kind, values). When every frame's header bytes are identical the frames sit at a
    fixed stride and come back as one numpy view: for floats an (n, 4 * dim) uint8 view of the
    little-endian float32 bytes (copied row by row later, which is ~5x faster than copying an
    unaligned float32 view), for int64 an (n, 1) int64 array. Otherwise a list with one 1-D
    float32 array, or one list of ints, per frame.
    """
    if start == end:
        return _KINDS[want], (np.zeros((0, 0), np.float32) if want == _FLOAT else [])
    field, wire, fa, fb = next(_fields(buf, start, end))
    if field != 1 or wire != _LEN:
        raise _Unusual
    kind, ka, kb = _feature(buf, fa, fb)
    if kind != want:
        raise _Unusual  # the fallback names the wrong kind precisely
    pa, pb = _packed(buf, ka, kb)
    header, stride = pa - start, fb - start
    if pb == fb and (end - start) % stride == 0:
        count = (end - start) // stride
        rows = np.frombuffer(buf, np.uint8, end - start, start).reshape(count, stride)
        if (rows[:, :header] == rows[0, :header]).all():
            width = stride - header
            if want == _FLOAT and width % 4 == 0:
                return "float_list", rows[:, header:]
            if want == _INT64 and width == 1 and (rows[:, header] < 0x80).all():
                return "int64_list", rows[:, header : header + 1].astype(np.int64)
    # Frames differ in encoding or size: one Python step per frame.
    out: list[Any] = []
    for field, wire, fa, fb in _fields(buf, start, end):
        if field != 1 or wire != _LEN:
            raise _Unusual
        kind, ka, kb = _feature(buf, fa, fb)
        if kind != want:
            raise _Unusual
        pa, pb = _packed(buf, ka, kb)
        if want == _FLOAT:
            if (pb - pa) % 4:
                raise _Unusual
            out.append(np.frombuffer(buf, "<f4", (pb - pa) // 4, pa))
        else:
            out.append(_int64s(buf, pa, pb))
    return _KINDS[want], out


@dataclass
class _Parsed:
    context: dict[str, tuple[str | None, list[Any]]]
    lists: dict[str, tuple[str | None, Any]]


def _parse_fast(buf: _Buf, size: int) -> _Parsed:
    context_at: dict[str, tuple[int, int]] = {}
    lists_at: dict[str, tuple[int, int]] = {}
    seen = set()
    for field, wire, a, b in _fields(buf, 0, size):
        if field in (1, 2):
            if wire != _LEN or field in seen:
                raise _Unusual  # protobuf would merge repeated messages; leave that to it
            seen.add(field)
            _map(buf, a, b, context_at if field == 1 else lists_at)
    context = {
        k: _context_value(buf, a, b) for k, (a, b) in context_at.items() if k in CONTEXT_KEYS
    }
    lists = {}
    for key, want in (("features", _FLOAT), ("labels", _INT64)):
        if key in lists_at:
            lists[key] = _frames(buf, *lists_at[key], want)
    return _Parsed(context, lists)


def _parse_proto(buf: bytes, where: str) -> _Parsed:
    """Parse with the protobuf classes shipped by the tfrecord package (slow, any encoding)."""
    from google.protobuf.message import DecodeError
    from tfrecord import example_pb2

    try:
        example = example_pb2.SequenceExample.FromString(bytes(buf))
    except DecodeError as err:
        raise DataError(
            f"{where}: not a valid tf.train.SequenceExample ({err}); the shard is corrupt or "
            "holds another record type"
        ) from None
    context: dict[str, tuple[str | None, list[Any]]] = {}
    for key, feat in example.context.feature.items():
        kind = feat.WhichOneof("kind")
        context[key] = (kind, list(getattr(feat, kind).value) if kind else [])
    lists: dict[str, tuple[str | None, Any]] = {}
    for key, want in (("features", "float_list"), ("labels", "int64_list")):
        if key not in example.feature_lists.feature_list:
            continue
        frames = example.feature_lists.feature_list[key].feature
        values: list[Any] = []
        for i, feat in enumerate(frames):
            kind = feat.WhichOneof("kind")
            if kind != want:
                raise DataError(
                    f"{where}: feature_lists {key!r} frame {i} holds {kind or 'no value'}, "
                    f"expected {want}; re-write the shard in the documented format"
                )
            vals = getattr(feat, kind).value
            values.append(np.array(vals, np.float32) if want == "float_list" else list(vals))
        lists[key] = (want, values)
    return _Parsed(context, lists)
