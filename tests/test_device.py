"""datasets.device: one resolver of --device for every command."""

import os

import pytest
import torch

from datasets.device import DeviceError, cpu_threads_each, resolve_device
from datasets.errors import UserError
from models import train_cli


def test_auto_takes_the_gpu_only_when_one_is_visible():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == expected
    assert resolve_device(None) == expected


@pytest.mark.parametrize("name", ["cpu", "cpu:0"])
def test_a_cpu_is_returned_as_given(name):
    assert resolve_device(name) == name


@pytest.mark.parametrize("name", ["tpu", "mps", "gpu", ""])
def test_a_device_that_is_not_cpu_or_cuda_is_a_user_error_saying_what_to_pass(name):
    with pytest.raises(DeviceError, match="use cpu, cuda, cuda:N or auto") as info:
        resolve_device(name)
    assert isinstance(info.value, UserError) and not isinstance(info.value, ValueError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_a_user_error_pointing_at_the_cpu(name):
    with pytest.raises(DeviceError, match="no CUDA GPU is visible here; use --device cpu"):
        resolve_device(name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_gpu_number_past_the_last_one_is_a_user_error():
    assert resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(DeviceError, match="numbered from 0"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_the_train_command_reports_an_unknown_device_in_one_line(tmp_path, capsys):
    rc = train_cli.main(
        ["--device", "tpu", "--data", str(tmp_path / "*"), "--out", str(tmp_path / "m.pt")]
    )
    assert rc == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --device 'tpu' is not a device here; use cpu, cuda, cuda:N or auto"
    ]


@pytest.mark.parametrize(
    ("cores", "jobs", "each"), [(2, 1, 2), (2, 2, 1), (2, 3, 1), (16, 4, 4), (None, 2, 1)]
)
def test_cpu_threads_each_splits_the_cores_and_never_gives_none(monkeypatch, cores, jobs, each):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert cpu_threads_each(jobs) == each
