"""Feature extraction: timestamp resampling, shard contents, skipped videos, resuming, weights."""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torchvision
from tfrecord import example_pb2
from tfrecord.reader import tfrecord_iterator

from datasets import extract
from datasets.errors import DataError
from datasets.extract import ClipBatcher, ExtractConfig, decode_video
from datasets.records import read_clips

ROOT = Path(__file__).resolve().parents[1]


def write_video(
    path: Path, fps: float | Fraction, frames: int, size=(64, 48), codec="mpeg4", gray: bool = False
) -> Path:
    """Write a small video: a red square moving over a background that brightens per frame.

    gray=True writes flat frames of brightness 8 * index with a lossless codec, so a decoded
    frame tells which source frame it came from.
    """
    w, h = size
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1" if gray else codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv444p" if gray else "yuv420p"
        for i in range(frames):
            if gray:
                img = np.full((h, w, 3), 8 * i % 256, np.uint8)
            else:
                img = np.zeros((h, w, 3), np.uint8)
                img[..., 2] = (10 * i) % 256
                x = (3 * i) % (w - 10)
                img[10:20, x : x + 10] = (255, 0, 0)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# 5 videos in sorted order; with --shard-size 2 the shards are [0, 1], [2, 3 (broken)], [4].
VIDEOS = {
    "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi": (25, 50),  # 2 s
    "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c02.avi": (30, 45),  # 1.5 s at 30 fps
    "Archery/v_Archery_g02_c01.avi": (25, 20),  # 0.8 s: shorter than --seconds 1
    "Archery/v_Archery_g03_c01.avi": None,  # junk bytes
    "HandstandPushups/v_HandStandPushups_g02_c01.avi": (25, 30),
}
EXPECTED = {  # filename -> (label, text, frames at --seconds 1)
    "v_ApplyEyeMakeup_g01_c01.avi": (1, "ApplyEyeMakeup", 25),
    "v_ApplyEyeMakeup_g01_c02.avi": (1, "ApplyEyeMakeup", 25),
    "v_Archery_g02_c01.avi": (3, "Archery", 20),
    "v_HandStandPushups_g02_c01.avi": (37, "HandstandPushups", 25),
}
SHARDS = [f"ucf101-0000{i}-of-00003.tfrecord" for i in range(3)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("UCF-101")
    for name, spec in VIDEOS.items():
        if spec is None:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(np.random.default_rng(0).bytes(3000))
        else:
            write_video(root / name, *spec)
    return root


def config(videos: Path, out: Path, **kw) -> ExtractConfig:
    """Small, quick settings: resnet18 at 32 px on the CPU, 1 s per clip, 2 clips per shard."""
    base = dict(
        model="resnet18",
        random_init=True,
        seconds=1.0,
        image_size=32,
        device="cpu",
        batch_size=16,
        workers=0,
        shard_size=2,
    )
    return ExtractConfig(videos=videos, out=out, **{**base, **kw})


def raw_records(path: Path) -> list[example_pb2.SequenceExample]:
    """Parse a shard with the tfrecord package's protobuf classes (sees the padding too)."""
    return [example_pb2.SequenceExample.FromString(bytes(r)) for r in tfrecord_iterator(str(path))]


def mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.glob("*.tfrecord")}


# ----------------------------------------------------------------------------- decoding


def test_decoding_a_30fps_video_at_25fps_picks_frames_by_timestamp(tmp_path: Path) -> None:
    path = write_video(tmp_path / "v_Archery_g01_c01.avi", Fraction(30), 30, gray=True)
    frames = decode_video(path, fps=25, seconds=1, size=32)
    source = np.rint(frames[:, 16, 16, 0] / 8).astype(int).tolist()
    # Output frame k shows the source frame on screen at k/25 s: index floor(k * 30 / 25).
    assert source == [k * 30 // 25 for k in range(25)]


def test_decoding_a_12_5fps_video_at_25fps_repeats_each_frame(tmp_path: Path) -> None:
    path = write_video(tmp_path / "v_Archery_g01_c01.avi", Fraction(25, 2), 10, gray=True)
    frames = decode_video(path, fps=25, seconds=10, size=32)
    source = np.rint(frames[:, 16, 16, 0] / 8).astype(int).tolist()
    assert source == [k // 2 for k in range(20)]  # 0.8 s of video -> 20 frames, no more


def test_decoding_stops_after_seconds_and_keeps_a_short_video_short(tmp_path: Path) -> None:
    long = write_video(tmp_path / "long.avi", 25, 60, gray=True)
    short = write_video(tmp_path / "short.avi", 25, 7, gray=True)
    frames = decode_video(long, fps=25, seconds=1.2, size=32)
    assert frames.shape == (30, 32, 32, 3)
    assert np.rint(frames[:, 0, 0, 0] / 8).astype(int).tolist() == list(range(30))
    assert decode_video(short, fps=25, seconds=2, size=32).shape == (7, 32, 32, 3)


def test_frames_are_resized_by_shorter_side_and_centre_cropped(tmp_path: Path) -> None:
    path = tmp_path / "v.avi"
    with av.open(str(path), "w") as container:  # 64x48: red 6-px borders left and right
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv444p"
        img = np.full((48, 64, 3), (0, 0, 200), np.uint8)
        img[:, :6] = img[:, -6:] = (200, 0, 0)
        for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    frame = decode_video(path, fps=25, seconds=1, size=32)[0].astype(int)
    # 64x48 -> 43x32, crop x 5..37 of 43 = source x 7.5..55.5: the red borders are cut off
    # (a squash to 32x32 would keep them), the whole height is kept.
    assert frame.shape == (32, 32, 3)
    assert (frame[..., 2] > 150).all() and (frame[..., 0] < 50).all()


def test_junk_bytes_raise_an_ffmpeg_error(tmp_path: Path) -> None:
    path = tmp_path / "v_Archery_g01_c01.avi"
    path.write_bytes(b"RIFF" + bytes(range(256)) * 8)
    with pytest.raises(av.FFmpegError):
        decode_video(path, size=32)


# ----------------------------------------------------------------------------- batching


def test_clip_batcher_fills_every_batch_across_clip_boundaries() -> None:
    sizes: list[int] = []

    def embed(frames: torch.Tensor) -> torch.Tensor:
        sizes.append(len(frames))
        return frames.float() * 2

    batcher = ClipBatcher(embed, batch_size=4)
    clips = {k: torch.arange(n).view(n, 1) + 100 * k for k, n in enumerate([3, 6, 1, 2, 5])}
    out = []
    for key, frames in clips.items():
        out += batcher.add(key, frames)
    out += batcher.flush()
    assert sizes == [4, 4, 4, 4, 1]  # 17 frames
    assert [k for k, _ in out] == [0, 1, 2, 3, 4]
    for key, features in out:
        assert torch.equal(features, clips[key].float() * 2)


# ----------------------------------------------------------------------------- whole runs


@pytest.fixture(scope="module")
def extracted(videos: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("out")
    return out, extract.extract(config(videos, out))


def test_shards_hold_every_readable_clip_with_label_length_and_size(extracted) -> None:
    out, result = extracted
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == SHARDS
    clips = list(read_clips(str(out / "*")))  # the contract's default glob form still reads
    assert [c.filename for c in clips] == list(EXPECTED)
    for clip in clips:
        label, text, frames = EXPECTED[clip.filename]
        assert (clip.label, clip.text, clip.sequence_length, clip.fps) == (label, text, frames, 25)
        assert clip.features.shape == (frames, 512) and clip.features.dtype == np.float32
        assert np.isfinite(clip.features).all() and clip.features.std() > 0
    assert (result.clips_written, result.shards_written, result.feature_dim) == (4, 3, 512)


def test_records_are_padded_to_seconds_times_fps_with_label_zero(extracted) -> None:
    out, _ = extracted
    (short,) = [
        r
        for r in raw_records(out / SHARDS[1])
        if r.context.feature["filename"].bytes_list.value[0] == b"v_Archery_g02_c01.avi"
    ]
    frames = short.feature_lists.feature_list["features"].feature
    labels = [f.int64_list.value[0] for f in short.feature_lists.feature_list["labels"].feature]
    assert len(frames) == 25 and short.context.feature["sequence_length"].int64_list.value[0] == 20
    assert labels == [3] * 20 + [0] * 5
    assert all(not any(f.float_list.value) for f in frames[20:])


def test_broken_video_is_skipped_listed_and_leaves_shard_assignment_alone(extracted) -> None:
    out, result = extracted
    assert [s.filename for s in result.skipped] == ["v_Archery_g03_c01.avi"]
    assert "InvalidDataError" in result.skipped[0].reason
    listed = extract.skipped_path(out).read_text().splitlines()
    assert [line.split("\t")[0] for line in listed] == ["v_Archery_g03_c01.avi"]
    # Shard 1 = sorted videos 2..3: the short Archery clip only; shard 2 is still the last video.
    assert [c.filename for c in read_clips([str(out / SHARDS[1])])] == ["v_Archery_g02_c01.avi"]
    assert [c.filename for c in read_clips([str(out / SHARDS[2])])] == [
        "v_HandStandPushups_g02_c01.avi"
    ]


def test_second_run_resumes_without_rewriting_finished_shards(videos: Path, tmp_path: Path):
    cfg = config(videos, tmp_path)
    extract.extract(cfg)
    before = mtimes(tmp_path)
    again = extract.extract(cfg)
    assert (again.shards_written, again.shards_resumed, again.frames) == (0, 3, 0)
    assert mtimes(tmp_path) == before
    # The skipped video of an earlier run is still reported.
    assert [s.filename for s in again.skipped] == ["v_Archery_g03_c01.avi"]


def test_deleted_or_interrupted_shards_are_redone_identically(videos: Path, tmp_path: Path):
    cfg = config(videos, tmp_path)
    extract.extract(cfg)
    first = {c.filename: c.features for c in read_clips(str(tmp_path / "*"))}
    before = mtimes(tmp_path)
    (tmp_path / SHARDS[1]).unlink()  # deleted by hand
    # Killed while writing shard 2: its temp file is there, its manifest is not yet.
    (tmp_path / extract.STATE_DIR / f"{SHARDS[2]}.json").unlink()
    stale = tmp_path / f".{SHARDS[2]}.k3j4h5.tmp"
    stale.write_bytes(b"half a shard")
    again = extract.extract(cfg)
    assert (again.shards_written, again.shards_resumed) == (2, 1)
    assert mtimes(tmp_path)[SHARDS[0]] == before[SHARDS[0]]
    assert not stale.exists()
    redone = {c.filename: c.features for c in read_clips(str(tmp_path / "*"))}
    assert redone.keys() == first.keys()
    for name, features in first.items():
        np.testing.assert_array_equal(redone[name], features)  # seeded random init: same net


def test_decoding_in_worker_processes_gives_the_same_features(videos: Path, extracted, tmp_path):
    out, _ = extracted
    extract.extract(config(videos, tmp_path, workers=2, batch_size=7))
    ref = {c.filename: c.features for c in read_clips(str(out / "*"))}
    got = {c.filename: c.features for c in read_clips(str(tmp_path / "*"))}
    assert got.keys() == ref.keys()
    for name, features in ref.items():
        np.testing.assert_allclose(got[name], features, rtol=1e-4, atol=1e-5)


def test_resnet50_gives_2048_features_per_frame(tmp_path: Path) -> None:
    write_video(tmp_path / "videos" / "v_YoYo_g01_c01.avi", 25, 6)  # flat layout
    result = extract.extract(
        config(tmp_path / "videos", tmp_path / "out", model="resnet50", seconds=0.2)
    )
    (clip,) = read_clips(str(tmp_path / "out" / "*"))
    assert result.feature_dim == 2048
    assert (clip.label, clip.features.shape) == (101, (5, 2048))


def test_labels_come_from_classind_when_splits_are_given(tmp_path: Path) -> None:
    write_video(tmp_path / "videos" / "v_Archery_g01_c01.avi", 25, 3)
    splits = tmp_path / "ucfTrainTestlist"
    splits.mkdir()
    (splits / "classInd.txt").write_text("1 YoYo\n2 archery\n")
    extract.extract(config(tmp_path / "videos", tmp_path / "out", splits=splits))
    (clip,) = read_clips(str(tmp_path / "out" / "*"))
    assert (clip.label, clip.text) == (2, "archery")


def test_changed_settings_refuse_to_resume_into_the_same_folder(videos: Path, extracted):
    out, _ = extracted
    with pytest.raises(DataError, match=r"other settings \(seconds 1.0 -> 0.5"):
        extract.extract(config(videos, out, seconds=0.5))


# ----------------------------------------------------------------------------- weights and CLI


def test_cached_torchvision_weights_are_loaded_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert extract.find_cached_weights("resnet18") is None
    saved = torchvision.models.resnet18()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(saved.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    encoder, weights = extract.load_encoder("resnet18")
    assert weights.startswith("resnet18-f37072fd.pth")
    assert torch.equal(encoder.net.conv1.weight, saved.conv1.weight)


def test_weights_of_another_architecture_are_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(DataError, match="do not fit torchvision resnet50"):
        extract.load_encoder("resnet50", weights=path)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "datasets.extract", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow
def test_missing_weights_is_one_error_line_pointing_to_weights_flag(videos: Path, tmp_path):
    proc = run_cli(
        "--videos",
        str(videos),
        "--out",
        str(tmp_path / "out"),
        "--device",
        "cpu",
        env={"TORCH_HOME": str(tmp_path / "empty-torch-home")},
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no pretrained resnet50 weights")
    assert "--weights" in lines[0] and "resnet50-11ad3fa6.pth" in lines[0]
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in lines[0]
    assert not (tmp_path / "out").exists()  # failed before touching the output


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seconds", "0"], "--seconds must be a positive number"),
        (["--shard-size", "0"], "--shard-size must be at least 1"),
        (["--model", "vgg16"], "invalid choice: 'vgg16'"),
    ],
)
def test_bad_flags_are_one_error_line_and_exit_2(videos, tmp_path, capsys, argv, message):
    code = extract.main(["--videos", str(videos), "--out", str(tmp_path), "--random-init", *argv])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(err) == 1 and message in err[0]


def test_videos_without_ucf101_names_are_an_error_before_any_work(tmp_path, capsys):
    write_video(tmp_path / "videos" / "clip1.avi", 25, 2)
    code = extract.main(
        [
            "--videos",
            str(tmp_path / "videos"),
            "--out",
            str(tmp_path / "out"),
            "--random-init",
            "--device",
            "cpu",
        ]
    )
    assert code == 2
    assert "1 of 1 videos cannot be labelled, e.g. clip1.avi" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_prints_a_summary_and_the_skipped_video(videos: Path, tmp_path: Path) -> None:
    proc = run_cli(
        "--videos",
        str(videos),
        "--out",
        str(tmp_path),
        "--random-init",
        "--model",
        "resnet18",
        "--image-size",
        "32",
        "--seconds",
        "1",
        "--shard-size",
        "2",
        "--device",
        "cpu",
        "--workers",
        "0",
    )
    assert proc.returncode == 0, proc.stderr
    assert "3 shards written, 0 already done (of 3); 4 clips, 95 frames" in proc.stdout
    assert "v_Archery_g03_c01.avi: InvalidDataError" in proc.stdout
    assert "RANDOM weights" in proc.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_features_point_the_same_way_as_cpu_features(videos, extracted, tmp_path):
    out, _ = extracted
    extract.extract(config(videos, tmp_path, device="cuda", workers=2, batch_size=64))
    ref = {c.filename: c.features for c in read_clips(str(out / "*"))}
    got = {c.filename: c.features for c in read_clips(str(tmp_path / "*"))}
    assert got.keys() == ref.keys()
    for name, features in ref.items():
        a, b = got[name], features  # (frames, 512) each
        cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert a.shape == b.shape and cosine.min() > 0.99, name
