"""Per-clip validation outcomes stored compactly in a trial's user attrs, for paired pruning.

Every trial scores the same validation clips in the same order, so a pruner in any worker
(PostgreSQL, several machines) can pair one trial's outcomes with another's clip by clip.
Per epoch: `val_correct/<epoch>` = "<clips>:" + base64 of np.packbits (clips / 8 bytes) and
`val_loss/<epoch>` = base64 of the float16 cross entropies (2 bytes a clip), plus
`val_num_classes` once, so the pruner knows chance.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

CORRECT_KEY = "val_correct/{epoch}"
LOSS_KEY = "val_loss/{epoch}"
CLASSES_KEY = "val_num_classes"


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


def outcome_attrs(epoch: int, correct: np.ndarray, loss: np.ndarray) -> dict[str, str]:
    """Return the user attrs that record one epoch's per-clip outcomes."""
    return {CORRECT_KEY.format(epoch=epoch): encode_correct(correct),
            LOSS_KEY.format(epoch=epoch): encode_loss(loss)}


def read_correct(user_attrs: dict[str, Any], epoch: int) -> np.ndarray | None:
    """Return a trial's per-clip right/wrong at epoch, or None if it was not recorded."""
    text = user_attrs.get(CORRECT_KEY.format(epoch=epoch))
    return decode_correct(text) if isinstance(text, str) else None


def read_loss(user_attrs: dict[str, Any], epoch: int) -> np.ndarray | None:
    """Return a trial's per-clip loss at epoch, or None if it was not recorded."""
    text = user_attrs.get(LOSS_KEY.format(epoch=epoch))
    return decode_loss(text) if isinstance(text, str) else None
