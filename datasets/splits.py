"""Train / validation / test parts of UCF-101: official splits, validation cut by group."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.errors import DataError
from datasets.ucf101 import parse_clip_name

# Official UCF-101 splits: the groups each one holds out for testing.
TEST_GROUPS = {1: range(1, 8), 2: range(8, 15), 3: range(15, 22)}
PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitSpec:
    """Which official split, and how many training groups to hold out for validation."""

    split: int = 1  # official split 1..3
    val_groups: int = 4  # training groups held out for validation (cut by group, never by clip)
    seed: int = 0  # which training groups become validation
    lists_dir: str | None = None  # folder with official trainlist0N.txt / testlist0N.txt


def _key(name: str) -> str:
    """Normalise a clip name for matching records to list entries (folder, case, .avi)."""
    base = name.strip().replace("\\", "/").rsplit("/", 1)[-1].lower()
    return base.removesuffix(".avi")


def _read_list(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(
            f"split list {str(path)!r} does not exist; point the lists folder (the study's "
            "data.lists_dir, or --lists of python -m datasets inspect) at the official "
            "UCF101TrainTestSplits-RecognitionTask files, or leave it out"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read split list {str(path)!r}: {err}") from None
    # 'ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1' (train) or without the id (test).
    names = [line.split()[0] for line in lines if line.strip()]
    if not names:
        raise DataError(f"split list {str(path)!r} is empty; use the official list file")
    return names


def _groups(filenames: Sequence[str]) -> np.ndarray:
    groups = np.empty(len(filenames), np.int64)
    bad = []
    for i, name in enumerate(filenames):
        try:
            groups[i] = parse_clip_name(name).group
        except DataError:
            bad.append(name)
    if bad:
        shown = ", ".join(repr(b) for b in bad[:3]) + (
            f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        )
        raise DataError(
            f"{len(bad)} of {len(filenames)} clip names are not in UCF-101 form "
            f"'v_<Class>_g<GG>_c<CC>.avi' ({shown}), so their group (which decides the split) "
            "is unknown; rename the clips or give the official split lists (the study's "
            "data.lists_dir, or --lists of python -m datasets inspect)"
        )
    return groups


def _official_parts(filenames: Sequence[str], spec: SplitSpec) -> tuple[np.ndarray, np.ndarray]:
    """Return (is_train, is_test) masks from the official trainlist0N / testlist0N files."""
    folder = Path(spec.lists_dir or ".")
    train = {_key(n) for n in _read_list(folder / f"trainlist0{spec.split}.txt")}
    test = {_key(n) for n in _read_list(folder / f"testlist0{spec.split}.txt")}
    both = sorted(train & test)
    if both:
        raise DataError(
            f"{len(both)} clips (e.g. {both[0]!r}) are in both trainlist0{spec.split}.txt and "
            f"testlist0{spec.split}.txt in {folder}; use the unmodified official lists"
        )
    keys = [_key(n) for n in filenames]
    return np.array([k in train for k in keys], bool), np.array([k in test for k in keys], bool)


def split_parts(filenames: Sequence[str], spec: SplitSpec) -> dict[str, np.ndarray]:
    """Return sorted int64 indices into filenames for 'train', 'val' and 'test' (disjoint)."""
    if spec.split not in TEST_GROUPS:
        raise DataError(f"split must be 1, 2 or 3 (official UCF-101 splits), got {spec.split}")
    if spec.val_groups < 1:
        raise DataError(
            f"val_groups must be >= 1 (training groups held out for validation), "
            f"got {spec.val_groups}"
        )
    if spec.lists_dir is not None:
        is_train, is_test = _official_parts(filenames, spec)
        in_lists = is_train | is_test
        groups = np.zeros(len(filenames), np.int64)
        if in_lists.any():
            groups[in_lists] = _groups([n for n, m in zip(filenames, in_lists, strict=True) if m])
        source = f"the lists in {spec.lists_dir}"
    else:
        groups = _groups(filenames)
        is_test = np.isin(groups, np.asarray(TEST_GROUPS[spec.split]))
        is_train = ~is_test
        source = f"split {spec.split} (test groups {TEST_GROUPS[spec.split].start}-"
        source += f"{TEST_GROUPS[spec.split].stop - 1})"
    train_groups = sorted({int(g) for g in groups[is_train]})
    if len(train_groups) <= spec.val_groups:
        raise DataError(
            f"the training part under {source} has {len(train_groups)} groups "
            f"({train_groups}), too few to hold out {spec.val_groups} for validation and keep "
            "some for training; lower val_groups or use data with more groups"
        )
    # random.Random: the same seed picks the same groups on every machine and numpy version.
    val_groups = sorted(random.Random(spec.seed).sample(train_groups, spec.val_groups))
    is_val = is_train & np.isin(groups, val_groups)
    masks = {"train": is_train & ~is_val, "val": is_val, "test": is_test}
    for part, mask in masks.items():
        if not mask.any():
            raise DataError(
                f"the {part!r} part under {source} holds no clips of these {len(filenames)}; "
                "check that the data covers the split's groups (or that the lists name its clips)"
            )
    return {part: np.flatnonzero(mask).astype(np.int64) for part, mask in masks.items()}


def validation_groups(filenames: Sequence[str], spec: SplitSpec) -> list[int]:
    """Return the group numbers split_parts holds out for validation."""
    val = split_parts(filenames, spec)["val"]
    return sorted({parse_clip_name(filenames[i]).group for i in val})
