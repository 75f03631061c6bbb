"""Official UCF-101 splits with a validation part cut by group, from names or official lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datasets.errors import DataError
from datasets.splits import TEST_GROUPS, SplitSpec, split_parts, validation_groups
from datasets.ucf101 import class_id, clip_filename, parse_clip_name

CLASSES = ("ApplyEyeMakeup", "HandStandPushups", "YoYo")


def names(groups: range = range(1, 26), clips: int = 2) -> list[str]:
    return [clip_filename(c, g, k) for c in CLASSES for g in groups for k in range(1, clips + 1)]


def groups_of(filenames: list[str], idx: np.ndarray) -> set[int]:
    return {parse_clip_name(filenames[i]).group for i in idx}


@pytest.mark.parametrize("split", [1, 2, 3])
def test_parts_are_disjoint_cover_all_and_test_holds_the_official_groups(split: int):
    files = names()
    parts = split_parts(files, SplitSpec(split=split))
    assert groups_of(files, parts["test"]) == set(TEST_GROUPS[split])
    together = np.concatenate([parts["train"], parts["val"], parts["test"]])
    assert sorted(together.tolist()) == list(range(len(files)))
    for idx in parts.values():
        assert idx.dtype == np.int64
        assert np.all(np.diff(idx) > 0)


def test_validation_is_whole_training_groups_never_single_clips():
    files = names()
    parts = split_parts(files, SplitSpec(split=1, val_groups=4, seed=3))
    val, train = groups_of(files, parts["val"]), groups_of(files, parts["train"])
    assert len(val) == 4
    assert not val & train
    assert not val & set(TEST_GROUPS[1])
    # every clip of a validation group (all classes) is in validation
    assert len(parts["val"]) == 4 * len(CLASSES) * 2
    assert validation_groups(files, SplitSpec(split=1, val_groups=4, seed=3)) == sorted(val)


def test_seed_picks_the_validation_groups_reproducibly():
    files = names()
    picks = {s: tuple(validation_groups(files, SplitSpec(seed=s))) for s in range(6)}
    assert picks[0] == tuple(validation_groups(files, SplitSpec(seed=0)))
    assert len(set(picks.values())) > 1


def test_unparseable_names_are_a_data_error_naming_them():
    files = [*names(), "clip_0001.avi"]
    with pytest.raises(DataError, match=r"1 of \d+ clip names.*'clip_0001.avi'"):
        split_parts(files, SplitSpec())


def test_empty_part_is_a_data_error():
    with pytest.raises(DataError, match="too few to hold out"):
        split_parts(names(groups=range(1, 10)), SplitSpec(split=1, val_groups=4))
    with pytest.raises(DataError, match=r"'test' part .* holds no clips"):
        split_parts(names(groups=range(8, 26)), SplitSpec(split=1))


@pytest.mark.parametrize("spec", [SplitSpec(split=4), SplitSpec(val_groups=0)])
def test_bad_spec_is_a_data_error(spec: SplitSpec):
    with pytest.raises(DataError):
        split_parts(names(), spec)


def write_lists(folder: Path, split: int = 1) -> None:
    test = TEST_GROUPS[split]
    # Official format: folder/name (+ class id in the train list), CRLF line ends; the class
    # folder is HandstandPushups while its files say HandStandPushups.
    train_lines, test_lines = [], []
    for name in names():
        clip = parse_clip_name(name)
        entry = f"{clip.class_name}/{name}"
        if clip.group in test:
            test_lines.append(entry)
        else:
            train_lines.append(f"{entry} {class_id(clip.class_name)}")
    (folder / f"trainlist0{split}.txt").write_text("\r\n".join(train_lines) + "\r\n")
    (folder / f"testlist0{split}.txt").write_text("\r\n".join(test_lines) + "\r\n")


def test_official_lists_decide_train_and_test_and_validation_is_cut_by_group(tmp_path: Path):
    write_lists(tmp_path, split=2)
    # Data with a clip the lists do not know: it goes to no part.
    files = [*names(), "v_YoYo_g26_c01.avi"]
    spec = SplitSpec(split=2, val_groups=3, seed=1, lists_dir=str(tmp_path))
    parts = split_parts(files, spec)
    assert groups_of(files, parts["test"]) == set(TEST_GROUPS[2])
    val, train = groups_of(files, parts["val"]), groups_of(files, parts["train"])
    assert len(val) == 3 and not val & train and not val & set(TEST_GROUPS[2])
    assert len(files) - 1 not in np.concatenate(list(parts.values()))
    assert sum(len(p) for p in parts.values()) == len(files) - 1


def test_missing_list_file_is_a_data_error(tmp_path: Path):
    with pytest.raises(DataError, match=r"trainlist01.txt' does not exist"):
        split_parts(names(), SplitSpec(lists_dir=str(tmp_path)))


def test_lists_that_put_a_clip_in_both_parts_are_a_data_error(tmp_path: Path):
    write_lists(tmp_path)
    with (tmp_path / "testlist01.txt").open("a") as f:
        f.write("YoYo/v_YoYo_g25_c01.avi\n")
    with pytest.raises(DataError, match=r"in both trainlist01\.txt and testlist01\.txt"):
        split_parts(names(), SplitSpec(lists_dir=str(tmp_path)))
