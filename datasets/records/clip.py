"""One clip as the record format stores it, and the record's keys (the data contract)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONTEXT_KEYS = ("sequence_length", "filename", "text", "fps")


LIST_KEYS = ("features", "labels")


@dataclass(frozen=True, eq=False)  # eq=False: comparing numpy arrays with == is not a bool
class Clip:
    """One video: its name, class name, frame rate, label and real (unpadded) frames."""

    filename: str  # 'v_Class_gGG_cCC.avi'
    text: str  # class name
    fps: float
    label: int  # video label = label of the first frame (1..101)
    features: np.ndarray  # (sequence_length, dim) float32, real frames only

    @property
    def sequence_length(self) -> int:
        """Return the number of real frames."""
        return int(self.features.shape[0])
