"""Trials on CUDA streams of their own: same losses as without, real overlap, OOM fails one trial.

The GPU tests skip cleanly without CUDA. The CPU tests run the same machinery (search.runner's
threads, the objective, BatchLoader) on the CPU, where streams are a no-op.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from optuna.trial import FrozenTrial, TrialState
from study_fixtures import TINY_DEFINITION, write_definition, write_tiny_data

import search.objective as objective_module
from datasets.batches import BatchLoader
from datasets.cache import FeatureSet
from search.best_checkpoint import BestCheckpoint
from search.definition import load_definition
from search.manifest import trial_seed
from search.objective import TrialSettings, objective
from search.runner import run_trials
from search.storage import open_storage
from search.study import open_study
from search.study_data import load_study_data
from search.tracking import TrackingConfig

# Deterministic cuBLAS needs this before CUDA starts (pytest imports test modules first).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

SEED = 7
SPACE = {**TINY_DEFINITION["space"], "hidden": {"low": 8, "high": 8192, "log": True}}
# Fixed params per trial number (enqueued), so every run trains the same configurations in
# whatever order its threads pick them up.
PARAMS = [
    {"cell": "gru", "layers": 2, "hidden": 24, "lr": 0.01, "clip_norm": 1.0},
    {"cell": "lstm", "layers": 1, "hidden": 16, "lr": 0.005, "clip_norm": 2.0},
    {"cell": "gru", "layers": 1, "hidden": 20, "lr": 0.02, "clip_norm": 0.5},
    {"cell": "lstm", "layers": 2, "hidden": 12, "lr": 0.008, "clip_norm": 4.0},
]
ABSURD = {"cell": "gru", "layers": 1, "hidden": 8192, "lr": 0.01, "clip_norm": 1.0}
# Per-epoch (train loss, val loss, val top-1) must match bitwise: deterministic algorithms are on
# for the GPU comparisons (deterministic_cuda), and a race shows as a different number.
SLEEP_CYCLES = 10**9  # torch.cuda._sleep: about 0.5 s on a ~2 GHz GPU


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_data(tmp_path_factory.mktemp("shards"), dim=64)


@pytest.fixture
def deterministic_cuda():
    """Deterministic kernels, so runs that differ only in streams must agree bit for bit."""
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]


def run_study_threads(
    root: Path,
    data: str,
    monkeypatch,
    *,
    device: str,
    jobs: int,
    params: list[dict],
    trial_streams: bool = True,
    resident: bool | None = None,
    epochs: int = 2,
    on_train_start=None,
) -> tuple[list[FrozenTrial], dict[int, list[tuple[float, float, float]]]]:
    """Run enqueued trials as run_study.py does (search.runner threads); return the trials and
    each trial's per-epoch (train loss, val loss, val top-1) by trial number."""
    root.mkdir(parents=True, exist_ok=True)
    definition = load_definition(write_definition(root, space=SPACE))
    study_data = load_study_data(definition.data, data, demo=False)
    url = f"sqlite:///{root / 'study.db'}"
    study = open_study(
        "tiny",
        open_storage(url),
        definition,
        seed=SEED,
        prune=False,
        feature_dim=study_data.features.feature_dim,
        fingerprint=study_data.features.fingerprint,
    )
    for p in params:
        study.enqueue_trial(p)
    settings = TrialSettings(
        definition=definition,
        data=study_data,
        device=device,
        seed=SEED,
        epochs=epochs,
        tracking=TrackingConfig(mode="disabled", project="t", group="tiny", dir=str(root)),
        checkpoint=BestCheckpoint(root / "best.pt"),
        artifact_dir=root / "artifacts",
        trial_streams=trial_streams,
    )
    losses: dict[int, list[tuple[float, float, float]]] = {}
    # The train() this run records: a test's own stand-in, never an earlier run's recorder.
    real_train = getattr(objective_module.train, "recorded", objective_module.train)

    def recording_train(model, train_loader, val_loader, config, **kwargs):
        if on_train_start is not None:
            on_train_start()
        result = real_train(model, train_loader, val_loader, config, **kwargs)
        losses[config.seed] = [(e.train_loss, e.val_loss, e.val_top1) for e in result.epochs]
        return result

    recording_train.recorded = real_train
    monkeypatch.setattr(objective_module, "train", recording_train)
    if resident is not None:
        monkeypatch.setattr(
            objective_module, "BatchLoader", functools.partial(BatchLoader, resident=resident)
        )
    run_trials(
        study,
        lambda trial, stop: objective(trial, settings, stop),
        storage_url=url,
        total=len(params),
        jobs=jobs,
    )
    trials = study.get_trials()
    return trials, {t.number: losses.get(trial_seed(SEED, t.number)) for t in trials}


def assert_same_losses(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for number in want:
        assert got[number] is not None and want[number] is not None, f"trial {number} trained"
        diff = max(
            abs(a - b)
            for g, w in zip(got[number], want[number], strict=True)
            for a, b in zip(g, w, strict=True)
        )
        assert got[number] == want[number], f"trial {number}: largest difference {diff:.3g}"


# --- CPU: the same machinery, streams are a no-op --------------------------------------------


@pytest.mark.slow
def test_two_jobs_give_each_trial_the_same_losses_as_one_job_on_cpu(
    tmp_path, data, monkeypatch, one_torch_thread
):
    _, serial = run_study_threads(
        tmp_path / "j1", data, monkeypatch, device="cpu", jobs=1, params=PARAMS[:3]
    )
    trials, parallel = run_study_threads(
        tmp_path / "j2", data, monkeypatch, device="cpu", jobs=2, params=PARAMS[:3]
    )
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert_same_losses(parallel, serial)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["build_model", "train", "evaluate"])
def test_out_of_memory_fails_only_its_trial_with_the_reason(
    tmp_path, data, monkeypatch, one_torch_thread, stage
):
    """The error PyTorch raises when CUDA runs out, raised on the CPU path in model build,
    training or evaluation (the new best's confusion matrix) of the 12-wide trial only."""
    real = getattr(objective_module, stage)

    def out_of_memory_for_the_doomed_width(*args, **kwargs):
        spec_or_model = args[0]
        hidden = spec_or_model.hidden if stage == "build_model" else spec_or_model.rnn.hidden_size
        if hidden == 12:
            raise torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 3.00 GiB\nmore detail"
            )
        return real(*args, **kwargs)

    monkeypatch.setattr(objective_module, stage, out_of_memory_for_the_doomed_width)
    # Evaluation runs for a new best only: one job, so the doomed trial 0 is the first best.
    trials, _ = run_study_threads(
        tmp_path,
        data,
        monkeypatch,
        device="cpu",
        jobs=1 if stage == "evaluate" else 2,
        params=[{**ABSURD, "hidden": 12}, {**ABSURD, "hidden": 16}],
        epochs=1,
    )
    failed, other = trials
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["fail_reason"] == (
        "CUDA out of memory: CUDA out of memory. Tried to allocate 3.00 GiB"
    )
    assert other.state == TrialState.COMPLETE and other.value is not None


# --- GPU ---------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.slow
@cuda
@pytest.mark.parametrize("resident", [False, True], ids=["host", "resident"])
@pytest.mark.parametrize("jobs", [1, 2])
def test_trial_streams_give_the_same_losses_as_no_side_streams(
    tmp_path, data, monkeypatch, deterministic_cuda, resident, jobs
):
    _, want = run_study_threads(
        tmp_path / "default-stream",
        data,
        monkeypatch,
        device="cuda",
        jobs=1,
        params=PARAMS,
        trial_streams=False,
        resident=resident,
    )
    trials, got = run_study_threads(
        tmp_path / "own-streams",
        data,
        monkeypatch,
        device="cuda",
        jobs=jobs,
        params=PARAMS,
        trial_streams=True,
        resident=resident,
    )
    assert [t.state for t in trials] == [TrialState.COMPLETE] * len(PARAMS)
    assert_same_losses(got, want)


@pytest.mark.gpu
@pytest.mark.slow
@cuda
@pytest.mark.parametrize("resident", [False, True], ids=["host", "resident"])
def test_slow_copies_reach_the_trial_stream_complete(resident):
    """Large batches, many of them, while the default stream is kept busy: a copy issued on any
    stream but the consumer's would land after the consumer read it."""
    rng = np.random.default_rng(0)
    clips, frames, dim = 384, 250, 2048  # 384 x 250 x 2048 fp16 = 393 MB
    lengths = rng.integers(frames // 3, frames + 1, size=clips)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    data = FeatureSet(
        frames=rng.standard_normal((int(offsets[-1]), dim), dtype=np.float32).astype(np.float16),
        offsets=offsets,
        labels=rng.integers(1, 102, size=clips),
        filenames=("x",) * clips,
        texts=("x",) * clips,
        fps=25.0,
        fingerprint=f"slow-copy-{resident}",
    )
    kwargs = dict(shuffle=True, seed=3, bucket=True)
    want = list(BatchLoader(data, np.arange(clips), 48, **kwargs).epoch(1))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        torch.cuda._sleep(SLEEP_CYCLES)  # keeps the trial's own stream busy too at the start
        loader = BatchLoader(data, np.arange(clips), 48, device="cuda", resident=resident, **kwargs)
        snapshots = []
        for batch in loader.epoch(1):
            # The default stream is busy: a copy queued there would land late.
            with torch.cuda.stream(torch.cuda.default_stream()):
                torch.cuda._sleep(SLEEP_CYCLES // 10)
            snapshots.append(batch.features.clone())  # runs on the trial's stream, at once
    torch.cuda.synchronize()
    assert len(snapshots) == len(want) >= 8
    for a, b in zip(want, snapshots, strict=True):
        assert torch.equal(a.features, b.cpu())


@pytest.mark.gpu
@pytest.mark.slow
@cuda
@pytest.mark.parametrize("trial_streams", [True, False], ids=["own-streams", "default-stream"])
def test_two_jobs_run_on_the_gpu_at_the_same_time(tmp_path, data, monkeypatch, trial_streams):
    """Each of two --jobs 2 trials puts a ~0.5 s spin kernel on its stream as its training
    starts; CUDA events around them show whether the GPU ran them at the same time. On the
    default stream they queue one after the other, which proves the test can fail."""
    both_started = threading.Barrier(2, timeout=120)
    enqueue = threading.Lock()  # (event, spin, event) enqueued as one, never interleaved
    spans: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
    origin = torch.cuda.Event(enable_timing=True)
    origin.record()
    torch.cuda.synchronize()

    def spin_on_the_trial_stream():
        both_started.wait()
        with enqueue:
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            torch.cuda._sleep(SLEEP_CYCLES)
            end.record()
            spans.append((start, end))

    trials, _ = run_study_threads(
        tmp_path,
        data,
        monkeypatch,
        device="cuda",
        jobs=2,
        params=PARAMS[:2],
        trial_streams=trial_streams,
        epochs=1,
        on_train_start=spin_on_the_trial_stream,
    )
    torch.cuda.synchronize()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    (a0, a1), (b0, b1) = ((origin.elapsed_time(s), origin.elapsed_time(e)) for s, e in spans)
    overlap_ms = min(a1, b1) - max(a0, b0)
    if trial_streams:
        assert overlap_ms > 0.5 * min(a1 - a0, b1 - b0), (a0, a1, b0, b1)
    else:
        assert overlap_ms <= 0, (a0, a1, b0, b1)


@pytest.mark.gpu
@pytest.mark.slow
@cuda
def test_an_absurd_width_fails_its_trial_and_the_other_trial_finishes(tmp_path, data, monkeypatch):
    """Hidden 8192: one 805 MB weight (3 x 8192 x 8192 fp32), under a cap of 512 MiB above what
    is in use now (set_per_process_memory_fraction; the real GPU is far larger). Its .to(device)
    runs out of memory in one allocation, so the 16-wide trial beside it is never starved."""
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    cap = torch.cuda.memory_reserved() + (512 << 20)
    torch.cuda.set_per_process_memory_fraction(cap / total)
    try:
        trials, _ = run_study_threads(
            tmp_path,
            data,
            monkeypatch,
            device="cuda",
            jobs=2,
            params=[ABSURD, {**ABSURD, "hidden": 16}],
            epochs=1,
        )
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    failed, other = trials
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["fail_reason"].startswith("CUDA out of memory: ")
    assert other.state == TrialState.COMPLETE and other.value is not None
