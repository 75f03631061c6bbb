"""TFRecord framing: find and open shards (plain or GZIP), walk their records, check both CRCs."""

from __future__ import annotations

import glob
import gzip
import hashlib
import os
import struct
import zlib
from collections.abc import Iterator
from typing import IO

import crc32c

from datasets.errors import DataError

_GZIP_MAGIC = b"\x1f\x8b"


_CHUNK = 1 << 26


_MASK_DELTA = 0xA282EAD8


def _masked_crc(data: bytes | memoryview) -> int:
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def find_shards(pattern: str) -> list[str]:
    """Return the sorted files matching a glob pattern; DataError when none match."""
    expanded = os.path.expanduser(str(pattern))
    paths = sorted(p for p in glob.glob(expanded, recursive=True) if os.path.isfile(p))
    if not paths:
        hint = ""
        if os.path.isdir(expanded):
            hint = f" ({expanded!r} is a folder: use '{os.path.join(expanded, '*')}')"
        raise DataError(
            f"no TFRecord files match {pattern!r}{hint}; check the path and quote the "
            "pattern so the shell does not expand it"
        )
    return paths


def _is_gzip(path: str, head: bytes) -> bool:
    # A plain shard whose first record length happens to start with 1f 8b is told apart by its
    # valid length CRC; everything else starting with the gzip magic is gzip.
    if head[:2] != _GZIP_MAGIC:
        return False
    if len(head) >= 12:
        (crc,) = struct.unpack("<I", head[8:12])
        if crc == _masked_crc(head[:8]):
            return False
    return True


def _open_shard(path: str) -> tuple[IO[bytes], bool]:
    try:
        raw = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    except OSError as err:
        raise DataError(f"cannot open TFRecord file {path!r}: {err.strerror}; check it") from None
    try:
        head = raw.read(12)
        raw.seek(0)
    except OSError as err:
        raw.close()
        raise DataError(f"cannot read TFRecord file {path!r}: {err}") from None
    if _is_gzip(path, head):
        raw.close()
        return gzip.open(path, "rb"), True
    return raw, False


def framing_digest(path: str) -> bytes:
    """Return a digest that changes with a shard's content, reading ~16 bytes per record.

    A plain shard: every record's length and data CRC (the CRC32C of its bytes, which the
    writer stored), found by hopping from header to header, so a change anywhere in a record
    changes it without reading the record. A GZIP shard cannot be hopped through without
    decompressing it, so its first and last 64 KiB stand in: the GZIP trailer holds the
    CRC-32 and size of the whole decompressed member (one member is what write_clips and
    TensorFlow write). Framing that does not add up (a corrupt or foreign file) falls back to
    those blocks too; decoding then reports the file. Raises OSError when the file cannot be read.
    """
    block = 1 << 16
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        digest.update(struct.pack("<Q", size))
        head = f.read(12)
        pos = 0
        while not _is_gzip(path, head):
            if len(head) < 12 or _masked_crc(head[:8]) != struct.unpack("<I", head[8:])[0]:
                break  # bad framing: hash the blocks below
            (length,) = struct.unpack("<Q", head[:8])
            end = pos + 12 + length
            f.seek(end)
            tail = f.read(16)  # this record's data CRC, then the next record's header
            if len(tail) < 4:
                break
            digest.update(head[:8] + tail[:4])
            pos, head = end + 4, tail[4:]
            if pos == size:
                return digest.digest()
        digest.update(b"blocks")
        f.seek(0)
        digest.update(f.read(block))
        f.seek(max(0, size - block))
        digest.update(f.read(block))
    return digest.digest()


def _fill(stream: IO[bytes], buffer: bytearray, size: int) -> int:
    """Read size bytes into buffer[:size], growing it; return the count (less only at EOF).

    One buffer is reused for every record: a fresh 2 MB bytes object per record costs page
    faults that made reading ~2x slower. It grows at most 64 MiB past what was actually read,
    so a corrupt length cannot allocate terabytes up front.
    """
    done = 0
    while done < size:
        want = min(size, done + _CHUNK)
        if len(buffer) < want:
            buffer.extend(bytes(max(want, min(size, 2 * len(buffer))) - len(buffer)))
        with memoryview(buffer)[done:want] as part:
            got = stream.readinto(part)
        if not got:
            break
        done += got
    return done


def _not_tfrecord_hint(head: bytes) -> str:
    if len(head) >= 2 and head[0] == 0x78 and (head[0] << 8 | head[1]) % 31 == 0:
        return (
            " The file starts like a ZLIB stream: ZLIB-compressed shards are not read, "
            "re-write them uncompressed or with GZIP."
        )
    return ""


def _iter_records(path: str) -> Iterator[tuple[int, bytearray, int]]:
    """Yield (record index, buffer, length) per record of a shard, framing and CRCs checked.

    The record is buffer[:length]; the buffer is reused, so use it before the next record.
    """
    stream, compressed = _open_shard(path)
    buffer = bytearray()
    stream_name = " of the decompressed GZIP data" if compressed else ""
    index = 0
    offset = 0  # in the (decompressed) stream, for the messages
    where = ""
    try:
        with stream:
            while True:
                where = f"{path}: record {index} (0-based, at byte {offset}{stream_name})"
                head = stream.read(12)
                if not head:
                    return
                if len(head) < 12:
                    raise DataError(
                        f"{where}: file is truncated ({len(head)} of 12 header bytes); "
                        "the copy is incomplete, re-copy or re-write the shard"
                    )
                length, length_crc = struct.unpack("<QI", head)
                if _masked_crc(head[:8]) != length_crc:
                    raise DataError(
                        f"{where}: bad CRC of the record length (corrupt file, or not a "
                        "TFRecord file); re-copy or re-write the shard."
                        + (_not_tfrecord_hint(head) if index == 0 else "")
                    )
                got = _fill(stream, buffer, length)
                tail = stream.read(4) if got == length else b""
                if len(tail) < 4:
                    raise DataError(
                        f"{where}: file is truncated (record needs {length + 4} bytes, "
                        f"{got + len(tail)} left); the copy is incomplete, re-copy or "
                        "re-write the shard"
                    )
                (data_crc,) = struct.unpack("<I", tail)
                with memoryview(buffer)[:length] as data:
                    crc = _masked_crc(data)
                if crc != data_crc:
                    raise DataError(
                        f"{where}: bad CRC of the record data (corrupt bytes); re-copy or "
                        "re-write the shard"
                    )
                yield index, buffer, length
                index += 1
                offset += 12 + length + 4
    except (OSError, EOFError, zlib.error) as err:
        # gzip.BadGzipFile is an OSError; EOFError is a gzip stream cut short.
        what = "truncated or corrupt GZIP data" if compressed else "read error"
        raise DataError(
            f"{where}: {what} ({type(err).__name__}: {err}); re-copy or re-write the shard"
        ) from None
