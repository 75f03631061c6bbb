"""Decode TFRecord shards once into a memory-mapped fp16 feature cache, fingerprinted by source."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FeatureSet:
    """Every clip of a dataset: ragged fp16 frames (memory-mapped) plus per-clip metadata."""

    # (total_frames, dim) float16 np.memmap; clip i = frames[offsets[i]:offsets[i+1]]
    frames: np.ndarray
    offsets: np.ndarray  # (n + 1,) int64
    labels: np.ndarray  # (n,) int64, class ids 1..101
    filenames: tuple[str, ...]
    texts: tuple[str, ...]
    fps: float
    fingerprint: str

    @property
    def lengths(self) -> np.ndarray:
        """Return the number of real frames of each clip, (n,) int64."""
        return np.diff(self.offsets)

    @property
    def feature_dim(self) -> int:
        """Return the size of one frame's feature vector."""
        return int(self.frames.shape[1])

    def __len__(self) -> int:
        return len(self.labels)
