"""`python -m datasets inspect`: the summary matches what was written; bad input is one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from datasets.records import Clip, write_clips
from datasets.ucf101 import CLASS_NAMES, clip_filename

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


def inspect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "datasets", "inspect", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def clips_for(labels: list[int], groups: list[int], lengths: list[int], dim: int = 8) -> list[Clip]:
    rng = np.random.default_rng(0)
    return [
        Clip(
            filename=clip_filename(CLASS_NAMES[lab - 1], g, i % 5 + 1),
            text=CLASS_NAMES[lab - 1],
            fps=25.0,
            label=lab,
            features=rng.standard_normal((n, dim)).astype(np.float32),
        )
        for i, (lab, g, n) in enumerate(zip(labels, groups, lengths, strict=True))
    ]


def test_json_report_matches_what_was_written(tmp_path: Path):
    groups = list(range(1, 26))
    labels = [1 + g % 3 for g in groups]  # ApplyEyeMakeup, ApplyLipstick, Archery
    lengths = [10 * g for g in groups]
    clips = clips_for(labels, groups, lengths)
    write_clips(tmp_path / "a.tfrecord", clips[:10], compress=True)
    write_clips(tmp_path / "b.tfrecord", clips[10:], pad_to=None)
    result = inspect(str(tmp_path / "*.tfrecord"), "--json", "--split", "2", "--val-groups", "3")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["clips"] == 25
    assert report["feature_dim"] == 8
    assert report["fps"] == 25.0
    assert report["classes"] == {"ApplyEyeMakeup": 8, "ApplyLipstick": 9, "Archery": 8}
    assert report["length"] == {"min": 10, "mean": 130.0, "max": 250}
    assert report["records"] == [
        {"filename": c.filename, "text": c.text, "label": c.label, "sequence_length": n}
        for c, n in zip(clips, lengths, strict=True)
    ]
    parts = report["parts"]
    assert parts["available"] and parts["split"] == 2
    assert (parts["train"], parts["val"], parts["test"]) == (15, 3, 7)
    assert len(parts["validation_group_ids"]) == 3


def test_json_report_of_tensorflow_written_shards():
    expected = json.loads((FIXTURES / "tf_expected.json").read_text())
    result = inspect(str(FIXTURES / "*.tfrecord"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    written = [r for name in sorted(expected["files"]) for r in expected["files"][name]]
    assert report["records"] == [
        {k: r[k] for k in ("filename", "text", "label", "sequence_length")} for r in written
    ]
    assert report["clips"] == len(written)
    assert report["feature_dim"] == expected["feature_dim"]
    assert sorted(report["fps_values"]) == sorted({r["fps"] for r in written})
    assert report["classes"]["YoYo"] == 2


def test_text_report_names_the_figures(tmp_path: Path):
    clips = clips_for([101, 101, 1], [1, 9, 12], [5, 7, 9])
    write_clips(tmp_path / "s", clips)
    result = inspect(str(tmp_path / "s"), "--val-groups", "1")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "clips:         3" in out
    assert "feature size:  8" in out
    assert "min 5, mean 7.0, max 9 frames" in out
    assert "YoYo            2" in out
    assert "train 1, val 1, test 1 clips" in out


def test_unparseable_names_leave_parts_unavailable_but_report_the_rest(tmp_path: Path):
    clip = clips_for([5], [1], [4])[0]
    odd = Clip("clip_0001.mp4", clip.text, clip.fps, clip.label, clip.features)
    write_clips(tmp_path / "s", [odd])
    result = inspect(str(tmp_path / "s"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["clips"] == 1
    assert report["parts"]["available"] is False
    assert "clip_0001.mp4" in report["parts"]["reason"]
    text = inspect(str(tmp_path / "s"))
    assert "unavailable" in text.stdout and text.returncode == 0


def test_official_lists_are_used_when_given(tmp_path: Path):
    clips = clips_for([1] * 6, [1, 2, 8, 9, 10, 11], [3] * 6)
    write_clips(tmp_path / "s", clips)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "trainlist01.txt").write_text(
        "".join(f"ApplyEyeMakeup/{c.filename} 1\n" for c in clips[2:])
    )
    (lists / "testlist01.txt").write_text("ApplyEyeMakeup/" + clips[0].filename + "\n")
    result = inspect(str(tmp_path / "s"), "--json", "--lists", str(lists), "--val-groups", "1")
    parts = json.loads(result.stdout)["parts"]
    assert (parts["train"], parts["val"], parts["test"]) == (3, 1, 1)


def test_bad_input_is_one_error_line_and_exit_code_2(tmp_path: Path):
    path = tmp_path / "s"
    write_clips(path, clips_for([3, 3], [1, 2], [4, 4]))
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    for args in ([str(path)], [str(path), "--json"], [str(tmp_path / "none*")], ["--split", "9"]):
        result = inspect(*args)
        assert result.returncode == 2
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "record 1" in inspect(str(path)).stderr
