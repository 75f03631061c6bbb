"""datasets.loading: the one builder of a trial's data (glob -> cache -> split -> loaders)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from datasets.errors import DataError, UserError
from datasets.loading import create_loaders, open_split, resident_clips
from datasets.splits import SplitSpec
from datasets.synthetic import write_synthetic
from models import evaluate as evaluate_cli
from models import train_cli

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """3 classes x 25 clips (one per group) of 3-16 frames, 4-d features."""
    out = tmp_path_factory.mktemp("data")
    write_synthetic(out, clips_per_class=25, frames=16, dim=4, classes=3, seed=0, workers=1)
    return out


@pytest.fixture(scope="module")
def split(shards, tmp_path_factory):
    return open_split(
        str(shards / "*"),
        cache_dir=str(tmp_path_factory.mktemp("cache")),
        split=SplitSpec(split=1, val_groups=4),
    )


def _labels(loader) -> list[int]:
    return [int(v) for b in loader.epoch(0) for v in b.labels]


def _lengths(loader) -> list[int]:
    return [int(v) for b in loader.epoch(0) for v in b.lengths]


def test_scoring_loaders_yield_the_split_clips_in_index_order_every_epoch(split):
    loaders = create_loaders(split, ("val", "test"), batch_size=4, device="cpu")
    features = split.features
    for part, loader in loaders.items():
        clips = split.parts[part]
        assert _labels(loader) == features.labels[clips].tolist()
        assert _lengths(loader) == features.lengths[clips].tolist()
        assert [int(v) for b in loader.epoch(3) for v in b.labels] == _labels(loader)
    # The data has clips of many lengths, so a length sort would have reordered them.
    assert len(set(features.lengths[split.parts["val"]].tolist())) > 1


def test_the_train_loader_shuffles_by_seed_over_exactly_the_train_clips(split):
    a = create_loaders(split, ("train",), batch_size=4, seed=1, device="cpu")["train"]
    b = create_loaders(split, ("train",), batch_size=4, seed=1, device="cpu")["train"]
    c = create_loaders(split, ("train",), batch_size=4, seed=2, device="cpu")["train"]
    assert _lengths(a) == _lengths(b) != _lengths(c)
    assert sorted(_labels(a)) == sorted(split.features.labels[split.parts["train"]].tolist())


@pytest.mark.parametrize("flags", [{"batch_size": 0}, {"batch_size": 4, "stride": 0}])
def test_a_batch_size_or_stride_below_one_is_a_user_error(split, flags):
    with pytest.raises(UserError, match="must be at least 1, got 0") as info:
        create_loaders(split, ("val",), device="cpu", **flags)
    assert not isinstance(info.value, ValueError)


def test_data_of_another_feature_size_than_the_model_is_refused(shards, tmp_path):
    with pytest.raises(DataError, match="4-d features but the model takes 8-d"):
        open_split(str(shards / "*"), cache_dir=str(tmp_path), split=SplitSpec(), input_dim=8)


def test_no_matching_shards_is_a_data_error_that_says_how_to_get_demo_data(tmp_path):
    with pytest.raises(DataError, match=r"no TFRecord files match .*python -m datasets\.synthetic"):
        open_split(str(tmp_path / "none" / "*"), cache_dir=str(tmp_path), split=SplitSpec())


def test_resident_clips_holds_nothing_on_the_cpu(split):
    with resident_clips(split, ("train", "val"), "cpu") as held:
        assert held is False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resident_clips_holds_one_device_copy_that_loaders_share_until_the_block_ends(split):
    from datasets import batches

    before = len(batches._RESIDENT)
    with resident_clips(split, ("train", "val"), "cuda") as held:
        assert held is True
        assert len(batches._RESIDENT) == before + 2
        loader = create_loaders(split, ("val",), batch_size=4, device="cuda")["val"]
        assert loader.resident and len(batches._RESIDENT) == before + 2  # shared, not copied
        del loader
    assert len(batches._RESIDENT) == before


@pytest.mark.parametrize("flag", ["--batch-size", "--stride"])
def test_train_cli_with_a_zero_batch_size_or_stride_prints_one_error_line(
    shards, tmp_path, capsys, flag
):
    rc = train_cli.main(
        [
            "--data",
            str(shards / "*"),
            "--cache-dir",
            str(tmp_path),
            "--device",
            "cpu",
            flag,
            "0",
            "--out",
            str(tmp_path / "m.pt"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: ") and "at least 1, got 0" in err[0]
    assert not (tmp_path / "m.pt").exists()


def test_evaluate_cli_with_a_zero_batch_size_prints_one_error_line(shards, tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    assert (
        train_cli.main(
            [
                "--data",
                str(shards / "*"),
                "--cache-dir",
                str(tmp_path),
                "--device",
                "cpu",
                "--layers",
                "1",
                "--hidden",
                "4",
                "--epochs",
                "1",
                "--out",
                str(ckpt),
            ]
        )
        == 0
    )
    capsys.readouterr()
    rc = evaluate_cli.main(
        [str(ckpt), "--cache-dir", str(tmp_path), "--device", "cpu", "--batch-size", "0"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == ["error: batch size must be at least 1, got 0"]


def test_the_evaluate_command_does_not_import_the_train_command():
    code = (
        "import sys; from models import evaluate; evaluate.main(['/nonexistent.pt']); "
        "print(sorted(m for m in sys.modules if m.startswith('models.')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    loaded = result.stdout.strip().splitlines()[-1]
    assert "models.evaluate" in loaded and "models.train" not in loaded.replace("training", "")
