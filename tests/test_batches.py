"""BatchLoader: stride, trimming, seeded order, bucketing, prefetch, the gather (resident) path."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
import torch

from datasets.batches import Batch, BatchLoader, epoch_batches, host_buffer, strided_lengths
from datasets.cache import FeatureSet

DIM = 3


def make_set(lengths: list[int], fingerprint: str = "test") -> FeatureSet:
    """A FeatureSet whose frame t of clip i holds (i, t, 1): every value says where it is from."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    frames = np.zeros((offsets[-1], DIM), dtype=np.float16)
    for i, n in enumerate(lengths):
        frames[offsets[i] : offsets[i + 1], 0] = i
        frames[offsets[i] : offsets[i + 1], 1] = np.arange(n)
        frames[offsets[i] : offsets[i + 1], 2] = 1
    n = len(lengths)
    return FeatureSet(
        frames=frames,
        offsets=offsets,
        labels=np.arange(n, dtype=np.int64) % 101 + 1,
        filenames=tuple(f"v_ApplyEyeMakeup_g{i % 25 + 1:02d}_c01.avi" for i in range(n)),
        texts=("ApplyEyeMakeup",) * n,
        fps=25.0,
        fingerprint=fingerprint,
    )


def expected_clip(i: int, length: int, stride: int) -> np.ndarray:
    t = np.arange(0, length, stride)
    return np.stack([np.full(len(t), i), t, np.ones(len(t))], axis=1).astype(np.float32)


def check_batch(batch, data: FeatureSet, stride: int) -> list[int]:
    """Assert a batch holds exactly its clips' strided frames, zero-padded; return the clips."""
    feats = batch.features.numpy()
    assert feats.dtype == np.float32
    clips = [int(c) for c in feats[:, 0, 0]]
    want_steps = strided_lengths(data.lengths[clips], stride)
    assert batch.lengths.tolist() == want_steps.tolist()
    assert feats.shape[1] == want_steps.max()  # trimmed to the longest clip in the batch
    assert batch.labels.tolist() == data.labels[clips].tolist()
    for row, c in enumerate(clips):
        n = want_steps[row]
        np.testing.assert_array_equal(feats[row, :n], expected_clip(c, data.lengths[c], stride))
        assert not feats[row, n:].any()
    return clips


def epoch_clips(loader: BatchLoader, epoch: int) -> list[list[int]]:
    return [check_batch(b, loader.data, loader.stride) for b in loader.epoch(epoch)]


LENGTHS = [5, 1, 9, 4, 7, 2, 8, 3, 6, 10, 2]


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_batches_hold_strided_frames_trimmed_to_longest_clip(stride):
    data = make_set(LENGTHS)
    loader = BatchLoader(data, np.arange(len(LENGTHS)), 4, stride=stride, prefetch=False)
    batches = list(loader.epoch(0))
    assert [len(b.lengths) for b in batches] == [4, 4, 3]
    assert epoch_clips(loader, 0) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    # ceil(len / stride): 9 frames at stride 2 -> frames 0,2,4,6,8
    assert batches[0].features.shape[1] == -(-9 // stride)


def test_strided_lengths_are_ceil_of_length_over_stride():
    assert strided_lengths(np.array([1, 2, 3, 4, 250]), 2).tolist() == [1, 1, 2, 2, 125]
    assert strided_lengths(np.array([1, 7]), 10).tolist() == [1, 1]


def test_unshuffled_order_follows_the_given_indices():
    data = make_set(LENGTHS)
    loader = BatchLoader(data, [9, 3, 3, 0], 3, prefetch=False)
    assert epoch_clips(loader, 0) == [[9, 3, 3], [0]]
    assert len(loader) == 2 and loader.num_examples == 4


@pytest.mark.parametrize("bucket", [False, True])
def test_shuffled_order_is_a_function_of_seed_and_epoch(bucket):
    data = make_set(list(range(1, 41)))
    idx = np.arange(3, 40)

    def order(seed, epoch):
        loader = BatchLoader(data, idx, 4, shuffle=True, seed=seed, bucket=bucket, prefetch=False)
        return epoch_clips(loader, epoch)

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)
    # every index appears exactly once per epoch
    for epoch in range(3):
        assert sorted(itertools.chain(*order(1, epoch))) == idx.tolist()
    # the loader keeps no state between epochs: epoch 1 is the same before or after epoch 0
    loader = BatchLoader(data, idx, 4, shuffle=True, seed=1, bucket=bucket, prefetch=False)
    first = epoch_clips(loader, 1)
    epoch_clips(loader, 0)
    assert epoch_clips(loader, 1) == first


def test_bucketing_cuts_padding_but_keeps_order_random():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=2000)
    idx = np.arange(2000)
    plain = epoch_batches(idx, 8, shuffle=True, seed=0, epoch=0)
    bucketed = epoch_batches(idx, 8, shuffle=True, seed=0, epoch=0, lengths=lengths, bucket=True)

    def padded_steps(batches):
        return sum(len(b) * lengths[b].max() for b in batches)

    assert sorted(np.concatenate(bucketed).tolist()) == idx.tolist()
    assert padded_steps(bucketed) < 0.7 * padded_steps(plain)
    # batch order is shuffled: lengths of consecutive batches are not sorted
    maxima = [lengths[b].max() for b in bucketed]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)
    again = epoch_batches(idx, 8, shuffle=True, seed=0, epoch=1, lengths=lengths, bucket=True)
    assert [b.tolist() for b in again] != [b.tolist() for b in bucketed]


@pytest.mark.parametrize("shuffle", [False, True])
def test_prefetch_thread_gives_the_same_batches_as_no_prefetch(shuffle):
    data = make_set(LENGTHS * 5)
    idx = np.arange(len(data))
    kwargs = dict(stride=2, shuffle=shuffle, seed=3, bucket=shuffle)
    with_thread = list(BatchLoader(data, idx, 4, prefetch=True, **kwargs).epoch(2))
    without = list(BatchLoader(data, idx, 4, prefetch=False, **kwargs).epoch(2))
    assert len(with_thread) == len(without) == 14
    for a, b in zip(with_thread, without, strict=True):
        assert torch.equal(a.features, b.features)
        assert torch.equal(a.lengths, b.lengths)
        assert torch.equal(a.labels, b.labels)


def test_prefetch_thread_stops_when_the_epoch_is_abandoned():
    data = make_set(LENGTHS * 20)
    loader = BatchLoader(data, np.arange(len(data)), 2)
    it = loader.epoch(0)
    next(it)
    it.close()  # joins the thread; would hang here if the thread ignored the stop
    assert len(list(loader.epoch(0))) == len(loader)


def test_prefetch_thread_hands_errors_to_the_consumer():
    data = make_set(LENGTHS)
    loader = BatchLoader(data, np.arange(len(data)), 4)

    def broken(clips):
        raise RuntimeError("disk gone")

    loader._host_batch = broken
    with pytest.raises(RuntimeError, match="disk gone"):
        list(loader.epoch(0))


def test_prefetch_thread_fills_host_buffers_and_the_consumer_copies_to_the_device():
    """The stream rule: the device copy runs in the consuming thread (on its CUDA stream)."""
    data = make_set(LENGTHS * 5)
    loader = BatchLoader(data, np.arange(len(data)), 3, shuffle=True, seed=2)
    host_threads, copy_threads = set(), set()
    host_batch, to_device = loader._host_batch, loader._to_device

    def recording_host_batch(clips):
        host_threads.add(threading.get_ident())
        return host_batch(clips)

    def recording_to_device(host):
        assert isinstance(host.features, torch.Tensor) and not isinstance(host, Batch)
        copy_threads.add(threading.get_ident())
        return to_device(host)

    loader._host_batch, loader._to_device = recording_host_batch, recording_to_device
    got = list(loader.epoch(1))
    assert len(got) == len(loader)
    assert copy_threads == {threading.get_ident()}
    assert len(host_threads) == 1 and host_threads.isdisjoint(copy_threads)
    for a, b in zip(
        BatchLoader(data, np.arange(len(data)), 3, shuffle=True, seed=2, prefetch=False).epoch(1),
        got,
        strict=True,
    ):
        assert torch.equal(a.features, b.features) and torch.equal(a.labels, b.labels)


@pytest.mark.parametrize("stride", [1, 3])
def test_resident_gather_matches_host_copy(stride):
    # resident=True on the CPU runs the GPU code path (index gathering) on host memory.
    data = make_set(LENGTHS * 3, fingerprint="resident-test")
    idx = np.array([30, 2, 7, 7, 12, 0, 25, 19, 4])
    kwargs = dict(stride=stride, shuffle=True, seed=5)
    host = BatchLoader(data, idx, 4, resident=False, **kwargs)
    gathered = BatchLoader(data, idx, 4, resident=True, **kwargs)
    assert gathered.resident and not host.resident
    # only the loader's own clips are copied
    assert gathered._resident.frames.shape[0] == data.lengths[np.unique(idx)].sum()
    for a, b in zip(host.epoch(4), gathered.epoch(4), strict=True):
        check_batch(b, data, stride)
        assert torch.equal(a.features, b.features)
        assert torch.equal(a.lengths, b.lengths) and torch.equal(a.labels, b.labels)


def test_loaders_over_the_same_clips_share_one_resident_copy():
    data = make_set(LENGTHS, fingerprint="shared-test")
    a = BatchLoader(data, [1, 2, 3], 2, resident=True)
    b = BatchLoader(data, [3, 2, 1], 2, resident=True, shuffle=True)
    c = BatchLoader(data, [1, 2], 2, resident=True)
    assert a._resident is b._resident
    assert c._resident is not a._resident


def test_cpu_device_defaults_to_host_mode():
    data = make_set(LENGTHS)
    assert not BatchLoader(data, [0, 1], 2).resident


def test_dtype_argument_sets_feature_dtype():
    data = make_set(LENGTHS)
    batch = next(iter(BatchLoader(data, [0, 2], 2, dtype=torch.float16).epoch(0)))
    assert batch.features.dtype == torch.float16
    assert batch.lengths.dtype == torch.int64 and batch.labels.dtype == torch.int64


def test_bad_arguments_are_rejected():
    data = make_set(LENGTHS)
    with pytest.raises(IndexError, match=r"0\.\.10"):
        BatchLoader(data, [0, 11], 2)
    with pytest.raises(ValueError, match="non-empty"):
        BatchLoader(data, [], 2)
    with pytest.raises(ValueError, match="stride"):
        BatchLoader(data, [0], 2, stride=0)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("resident", [False, True])
def test_cuda_batches_match_cpu_batches(resident):
    data = make_set(LENGTHS * 4, fingerprint=f"cuda-test-{resident}")
    idx = np.arange(len(data))
    kwargs = dict(stride=2, shuffle=True, seed=1, bucket=True)
    cpu = BatchLoader(data, idx, 5, **kwargs)
    gpu = BatchLoader(data, idx, 5, device="cuda", resident=resident, **kwargs)
    assert gpu.resident == resident
    for a, b in zip(cpu.epoch(1), gpu.epoch(1), strict=True):
        assert b.features.is_cuda and b.lengths.is_cuda and b.labels.is_cuda
        assert torch.equal(a.features, b.features.cpu())
        assert torch.equal(a.lengths, b.lengths.cpu()) and torch.equal(a.labels, b.labels.cpu())


@pytest.mark.gpu
@cuda
def test_cuda_device_picks_resident_mode_when_it_fits():
    data = make_set(LENGTHS, fingerprint="cuda-auto")
    assert BatchLoader(data, np.arange(len(data)), 4, device="cuda").resident


def test_large_batches_come_from_huge_page_buffers_with_the_same_values():
    # 32 clips x 70 frames x 1024 x 4 bytes = 9 MB: above the huge-page threshold
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 71, size=32)
    lengths[0] = 70
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    frames = rng.standard_normal((offsets[-1], 1024)).astype(np.float16)
    data = FeatureSet(
        frames=frames,
        offsets=offsets,
        labels=np.ones(32, dtype=np.int64),
        filenames=("x",) * 32,
        texts=("x",) * 32,
        fps=25.0,
        fingerprint="big",
    )
    (batch,) = BatchLoader(data, np.arange(32), 32, stride=2).epoch(0)
    assert batch.features.shape == (32, 35, 1024)
    for i in range(32):
        want = frames[offsets[i] : offsets[i + 1] : 2].astype(np.float32)
        np.testing.assert_array_equal(batch.features[i, : len(want)].numpy(), want)
        assert not batch.features[i, len(want) :].any()


def test_host_buffer_gives_independent_writable_tensors():
    a = host_buffer((3, 1024, 1024), torch.float32)  # 12 MB: huge-page path
    b = host_buffer((3, 1024, 1024), torch.float32)
    small = host_buffer((2, 3), torch.float16)
    a.fill_(1.0)
    b.fill_(2.0)
    assert a.shape == (3, 1024, 1024) and a.dtype == torch.float32 and a.is_contiguous()
    assert a.sum().item() == 3 * 1024 * 1024 and b.sum().item() == 2 * 3 * 1024 * 1024
    assert small.shape == (2, 3) and small.dtype == torch.float16
