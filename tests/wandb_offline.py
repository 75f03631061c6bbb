"""Read W&B offline run files back for tests (wandb 0.31 ships no Python reader for them).

A run file `wandb/offline-run-*/run-<id>.wandb` is a 7-byte header (b':W&B', u16 magic 0xBEE1,
u8 version 0) followed by LevelDB-log framing in 32 KiB blocks: each chunk is
crc u32 | length u16 | type u8 (1 full, 2 first, 3 middle, 4 last) | data, little-endian, and a
block tail shorter than a chunk header is zero padding. The CRC is zlib's CRC-32 (not LevelDB's
masked CRC-32C) of the type byte followed by the data, as wandb's own writer computes it.
Each reassembled record is a serialized `wandb.proto.wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEADER = struct.Struct("<4sHB")
CHUNK = struct.Struct("<IHB")
BLOCK = 32768
MAGIC = (b":W&B", 0xBEE1, 0)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class OfflineRunError(ValueError):
    """The run file is not a well-formed W&B offline run."""


@dataclass
class OfflineRun:
    """What an offline run recorded: identity, config, history rows, summary, exit code."""

    dir: Path
    id: str = ""
    project: str = ""
    entity: str = ""
    group: str = ""
    job_type: str = ""
    name: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None  # None: the run has no exit record (not closed)
    metrics: dict[str, str] = field(default_factory=dict)  # defined metric -> its step metric
    kinds: list[str] = field(default_factory=list)  # record types in file order

    def column(self, key: str) -> list[tuple[Any, Any]]:
        """Return (row's value of key, row) pairs for the history rows that have key."""
        return [(row[key], row) for row in self.history if key in row]


def read_chunks(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield (type, payload) of each LevelDB-log chunk after the file header, CRC checked."""
    pos = HEADER.size
    while pos < len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK.size:  # block trailer: zero padding
            pos += left
            continue
        if pos + CHUNK.size > len(data):
            raise OfflineRunError(f"truncated chunk header at byte {pos}")
        crc, length, kind = CHUNK.unpack_from(data, pos)
        start = pos + CHUNK.size
        payload = data[start : start + length]
        if len(payload) != length:
            raise OfflineRunError(f"chunk at byte {pos} wants {length} bytes, file ends first")
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) != crc:
            raise OfflineRunError(f"CRC mismatch in chunk at byte {pos}")
        yield kind, payload
        pos = start + length


def read_records(path: str | Path) -> Iterator[Any]:
    """Yield the `Record` protobufs of a run-<id>.wandb file in order."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if len(data) < HEADER.size or HEADER.unpack_from(data) != MAGIC:
        raise OfflineRunError(f"{path}: not a W&B run file (header {data[: HEADER.size]!r})")
    parts: list[bytes] | None = None
    for kind, payload in read_chunks(data):
        if kind == FULL and parts is None:
            message = payload
        elif kind == FIRST and parts is None:
            parts = [payload]
            continue
        elif kind == MIDDLE and parts is not None:
            parts.append(payload)
            continue
        elif kind == LAST and parts is not None:
            message, parts = b"".join([*parts, payload]), None
        else:
            raise OfflineRunError(f"{path}: chunk type {kind} out of order")
        record = wandb_internal_pb2.Record()
        record.ParseFromString(message)
        yield record
    if parts is not None:
        raise OfflineRunError(f"{path}: file ends inside a record")


def _key(item) -> list[str]:
    return [item.key] if item.key else list(item.nested_key)


def _set(target: dict, keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        target = target.setdefault(k, {})
    target[keys[-1]] = value


def _drop(target: dict, keys: list[str]) -> None:
    for k in keys[:-1]:
        target = target.get(k, {})
    target.pop(keys[-1], None)


def _apply(target: dict, updates, removes=()) -> None:
    for item in updates:
        _set(target, _key(item), json.loads(item.value_json))
    for item in removes:
        _drop(target, _key(item))


def run_file(run_dir: str | Path) -> Path:
    """Return the run-<id>.wandb file inside an offline-run-* folder."""
    files = sorted(Path(run_dir).glob("run-*.wandb"))
    if len(files) != 1:
        raise OfflineRunError(f"{run_dir}: expected one run-*.wandb file, found {len(files)}")
    return files[0]


def read_run(run_dir: str | Path, wait_s: float = 10.0) -> OfflineRun:
    """Return the run recorded in an offline-run-* folder (or its .wandb file), once closed.

    `run.finish()` returns before wandb-core has flushed the file (right after it the file is
    sometimes still just its 7-byte header), so this rereads until the exit record is there or
    wait_s has passed; then it returns what the file holds (exit_code None: never closed).
    """
    path = Path(run_dir)
    if path.is_dir():
        path = run_file(path)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            run = _parse_run(path)
        except OfflineRunError:  # a record only half written yet
            if time.monotonic() > deadline:
                raise
        else:
            if run.exit_code is not None or time.monotonic() > deadline:
                return run
        time.sleep(0.02)


def _parse_run(path: Path) -> OfflineRun:
    run = OfflineRun(dir=path.parent)
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        run.kinds.append(kind)
        if kind == "run":
            r = record.run
            run.id, run.project, run.entity = r.run_id, r.project, r.entity
            run.group, run.job_type, run.name = r.run_group, r.job_type, r.display_name
            _apply(run.config, r.config.update)
        elif kind == "config":
            _apply(run.config, record.config.update, record.config.remove)
        elif kind == "history":
            run.history.append(
                {".".join(_key(item)): json.loads(item.value_json) for item in record.history.item}
            )
        elif kind == "summary":
            _apply(run.summary, record.summary.update, record.summary.remove)
        elif kind == "metric":
            m = record.metric
            run.metrics[m.name or m.glob_name] = m.step_metric
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    run.config.pop("_wandb", None)
    return run


def offline_runs(root: str | Path) -> list[OfflineRun]:
    """Return every offline run under root/wandb, oldest folder first."""
    return [read_run(d) for d in sorted(Path(root).glob("wandb/offline-run-*"))]


def media_files(run: OfflineRun, kind: str = "table") -> list[Path]:
    """Return the files a run wrote under files/media/<kind> (tables, plotly charts, ...)."""
    return sorted((run.dir / "files" / "media" / kind).rglob("*"))


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Return the rows of a W&B table file (*.table.json) as dicts keyed by column."""
    doc = json.loads(Path(path).read_text())
    return [dict(zip(doc["columns"], row, strict=True)) for row in doc["data"]]
