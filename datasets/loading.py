"""A trial's data, built one way: shard glob -> decoded cache -> split parts -> batch loaders.

The train CLI, the evaluate CLI, the study's objective, its final scoring, the refit, the
protocol and the audit all build their data here (as timm's create_dataset / create_loader), so
they batch the same clips the same way.

Scoring loaders (every part but 'train') keep the split's clip order (sorted clip indices),
unshuffled. Sorting them by length would trim batches a little better, but the paired pruner
compares per-clip outcomes stored in this order with those of trials run earlier, also in
studies begun before this module existed; one fixed order keeps them comparable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from datasets.batches import BatchLoader
from datasets.cache import FeatureSet, load_features
from datasets.errors import DataError, UserError
from datasets.records import find_shards
from datasets.splits import SplitSpec, split_parts

DEFAULT_PATTERN = "data/ucf101/*"  # where the CLIs look for shards when --data is not given
DEMO_COMMAND = "python -m datasets.synthetic --out data/ucf101"  # writes demo shards there


@dataclass(frozen=True)
class SplitData:
    """Decoded clips of a shard glob and one split's clip indices per part."""

    features: FeatureSet
    parts: dict[str, np.ndarray]  # 'train' / 'val' / 'test' -> sorted clip indices
    pattern: str


def open_split(
    pattern: str, *, cache_dir: str, split: SplitSpec, input_dim: int | None = None
) -> SplitData:
    """Return the cached features of pattern and the split's parts; DataError on any data problem.

    input_dim: the feature size a model takes; data of another size is refused here, before any
    batch is built.
    """
    try:
        find_shards(pattern)
    except DataError as err:
        raise DataError(f"{err}; demo data: `{DEMO_COMMAND}`") from None
    features = load_features(pattern, cache_dir=cache_dir)
    if input_dim is not None and features.feature_dim != input_dim:
        raise DataError(
            f"{pattern!r} has {features.feature_dim}-d features but the model takes "
            f"{input_dim}-d; pass the data it was trained on with --data"
        )
    return SplitData(
        features=features, parts=split_parts(features.filenames, split), pattern=pattern
    )


def create_loaders(
    data: SplitData,
    parts: Sequence[str],
    *,
    batch_size: int,
    stride: int = 1,
    seed: int = 0,
    device: str = "cpu",
    bucket: bool = False,
) -> dict[str, BatchLoader]:
    """Return a loader per named part: 'train' shuffled by seed, the others in the split's order.

    bucket: batch training clips of similar length together (less padding). UserError when
    batch_size or stride is below 1.
    """
    for name, value in (("batch size", batch_size), ("stride", stride)):
        if value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    made = {}
    for part in parts:
        train = part == "train"
        made[part] = BatchLoader(
            data.features,
            data.parts[part],
            batch_size,
            stride=stride,
            shuffle=train,
            bucket=bucket and train,
            seed=seed,
            device=device,
        )
    return made


@contextlib.contextmanager
def resident_clips(data: SplitData, parts: Sequence[str], device: str) -> Iterator[bool]:
    """Hold one device copy of the parts' clips while the block runs; yield whether it is held.

    Loaders made inside the block for the same clips and device share this copy instead of
    copying again (datasets.batches shares a copy while anyone holds it): a study makes it once
    for all its trials. On the CPU, or when the clips do not fit on the GPU, nothing is held.
    """
    if torch.device(device).type != "cuda":
        yield False
        return
    # Batch size and stride do not matter: the copy is of whole clips, shared per clip set.
    holders = [BatchLoader(data.features, data.parts[part], 1, device=device) for part in parts]
    try:
        yield all(h.resident for h in holders)
    finally:
        holders.clear()
