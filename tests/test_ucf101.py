"""UCF-101 class ids in official classInd.txt order and the clip file-name scheme."""

from __future__ import annotations

from pathlib import Path

import pytest

from datasets.errors import DataError
from datasets.ucf101 import (
    CLASS_NAMES,
    NUM_CLASSES,
    ClipName,
    class_id,
    clip_filename,
    parse_clip_name,
    read_class_index,
)


@pytest.mark.parametrize(
    ("name", "cid"),
    [
        ("ApplyEyeMakeup", 1),
        ("Hammering", 35),
        ("HammerThrow", 36),
        ("JumpingJack", 47),
        ("JumpRope", 48),
        ("YoYo", 101),
    ],
)
def test_class_ids_follow_official_class_index(name: str, cid: int):
    assert class_id(name) == cid
    assert CLASS_NAMES[cid - 1] == name


def test_class_names_are_101_unique_in_case_insensitive_order():
    assert len(CLASS_NAMES) == NUM_CLASSES == len(set(CLASS_NAMES))
    assert list(CLASS_NAMES) == sorted(CLASS_NAMES, key=str.lower)
    assert list(CLASS_NAMES) != sorted(CLASS_NAMES)  # the trap a plain sorted() falls into


def test_unknown_class_name_is_a_data_error():
    with pytest.raises(DataError, match="unknown UCF-101 class name 'Juggling'"):
        class_id("Juggling")


def test_parse_clip_name_accepts_path_prefix_and_official_quirk():
    assert parse_clip_name("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi") == ClipName(
        "ApplyEyeMakeup", 8, 1
    )
    assert parse_clip_name("v_YoYo_g25_c04.avi") == ClipName("YoYo", 25, 4)
    # The dataset's files spell this class HandStandPushups, classInd.txt HandstandPushups.
    assert parse_clip_name("v_HandStandPushups_g01_c02.avi") == ClipName("HandstandPushups", 1, 2)
    assert class_id("HandStandPushups") == 37


@pytest.mark.parametrize("bad", ["", "clip_0001.avi", "v_YoYo_gxx_c01.avi", "v_YoYo_g01.avi"])
def test_unparseable_clip_name_is_a_data_error_naming_it(bad: str):
    with pytest.raises(DataError, match="not in UCF-101 form"):
        parse_clip_name(bad)


def test_clip_filename_round_trips():
    name = clip_filename("ApplyEyeMakeup", 8, 1)
    assert name == "v_ApplyEyeMakeup_g08_c01.avi"
    assert parse_clip_name(name) == ClipName("ApplyEyeMakeup", 8, 1)


def test_read_class_index_parses_official_format(tmp_path: Path):
    path = tmp_path / "classInd.txt"
    path.write_text("".join(f"{i + 1} {n}\r\n" for i, n in enumerate(CLASS_NAMES)))
    assert read_class_index(path) == {n: i + 1 for i, n in enumerate(CLASS_NAMES)}


def test_read_class_index_reports_bad_line(tmp_path: Path):
    path = tmp_path / "classInd.txt"
    path.write_text("1 ApplyEyeMakeup\nApplyLipstick 2\n")
    with pytest.raises(DataError, match=r"classInd.txt:2: expected '<id> <ClassName>'"):
        read_class_index(path)
    with pytest.raises(DataError, match="cannot read class index"):
        read_class_index(tmp_path / "missing.txt")
