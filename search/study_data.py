"""The data one study trains on: decoded features and the split's parts, loaded once per process."""

from __future__ import annotations

import glob
from dataclasses import dataclass

from datasets.loading import SplitData, open_split
from datasets.splits import SplitSpec
from datasets.ucf101 import CLASS_NAMES, NUM_CLASSES
from search.definition import DataSpec
from search.demo_data import ensure_demo_data

DEFAULT_PATTERN = DataSpec().pattern


@dataclass(frozen=True)
class StudyData(SplitData):
    """The study's SplitData, and whether it is the embedded demo set."""

    demo: bool

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    @property
    def class_names(self) -> list[str]:
        """Return the names by class id; id 0 is the padding/background class."""
        return ["background", *CLASS_NAMES]


def resolve_pattern(spec: DataSpec, override: str | None) -> tuple[str, bool]:
    """Return the shard glob to use and whether it is the embedded demo set."""
    if override:
        return override, False
    if spec.pattern == DEFAULT_PATTERN and not glob.glob(spec.pattern):
        return ensure_demo_data(), True
    return spec.pattern, False


def load_study_data(spec: DataSpec, pattern: str, demo: bool) -> StudyData:
    """Return the decoded (cached) features and split parts; DataError on any bad record."""
    split = open_split(
        pattern,
        cache_dir=spec.cache_dir,
        split=SplitSpec(split=spec.split, val_groups=spec.val_groups, lists_dir=spec.lists_dir),
    )
    return StudyData(features=split.features, parts=split.parts, pattern=pattern, demo=demo)
