"""Per-clip validation outcomes stored compactly in a trial's user attrs, for paired pruning.

Every trial scores the same validation clips in the same order, so a pruner in any worker
(PostgreSQL, several machines) can pair one trial's outcomes with another's clip by clip.
Per epoch one attr, `val_clips/<epoch>` = {"correct": "<clips>:" + base64 of np.packbits
(clips / 8 bytes), "loss": base64 of the float16 cross entropies (2 bytes a clip)}: one
storage write per epoch (a SQLite commit can cost ~40 ms); plus `val_num_classes` once, so the
pruner knows chance; and `train_steps_per_epoch` once, so it can compare trials with different
batch sizes at the same number of optimizer steps.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

OUTCOMES_KEY = "val_clips/{epoch}"
CLASSES_KEY = "val_num_classes"
STEPS_KEY = "train_steps_per_epoch"


def encode_correct(correct: np.ndarray) -> str:
    """Return right/wrong per clip as "<clips>:<base64 of the packed bits>"."""
    bits = np.packbits(np.asarray(correct, dtype=bool))
    return f"{len(correct)}:{base64.b64encode(bits.tobytes()).decode('ascii')}"


def decode_correct(text: str) -> np.ndarray:
    """Return the bool array encode_correct wrote."""
    count, _, data = text.partition(":")
    bits = np.frombuffer(base64.b64decode(data), dtype=np.uint8)
    return np.unpackbits(bits, count=int(count)).astype(bool)


def encode_loss(loss: np.ndarray) -> str:
    """Return per-clip losses as base64 of little-endian float16 (enough to rank differences)."""
    return base64.b64encode(np.asarray(loss, dtype="<f2").tobytes()).decode("ascii")


def decode_loss(text: str) -> np.ndarray:
    """Return the float32 losses encode_loss wrote."""
    return np.frombuffer(base64.b64decode(text), dtype="<f2").astype(np.float32)


def outcome_attrs(epoch: int, correct: np.ndarray, loss: np.ndarray) -> dict[str, Any]:
    """Return the user attr (one key) that records one epoch's per-clip outcomes."""
    return {
        OUTCOMES_KEY.format(epoch=epoch): {
            "correct": encode_correct(correct),
            "loss": encode_loss(loss),
        }
    }


def is_outcome_key(key: str) -> bool:
    """Return whether a user attr key holds per-clip outcomes (bulky: keep it out of tables)."""
    return key.startswith("val_clips/")


def read_correct(user_attrs: dict[str, Any], epoch: int) -> np.ndarray | None:
    """Return a trial's per-clip right/wrong at epoch, or None if it was not recorded."""
    text = _field(user_attrs, epoch, "correct")
    return decode_correct(text) if text is not None else None


def read_loss(user_attrs: dict[str, Any], epoch: int) -> np.ndarray | None:
    """Return a trial's per-clip loss at epoch, or None if it was not recorded."""
    text = _field(user_attrs, epoch, "loss")
    return decode_loss(text) if text is not None else None


def _field(user_attrs: dict[str, Any], epoch: int, name: str) -> str | None:
    record = user_attrs.get(OUTCOMES_KEY.format(epoch=epoch))
    value = record.get(name) if isinstance(record, dict) else None
    return value if isinstance(value, str) else None
