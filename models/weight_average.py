"""The mean of a model's weights over the ends of its last epochs (stochastic weight averaging).

A refit on train + validation has no validation left to pick an epoch, and the last epoch of a
constant learning rate is one point of a curve that still moves from epoch to epoch; the mean
of the last few epochs' weights is a steadier end point (on the benchmark set it scores within
noise of the last epoch, never below it: BENCHMARKS.md, bench/refit_stability.py).
Recurrent models here have no batch norm, so the averaged weights need no statistics refreshed.
"""

from __future__ import annotations

import torch
from torch import nn

from models.training import EpochResult


class EpochAverage:
    """An on_epoch callback: the running mean of model's weights over its last `count` epochs.

    epochs: the run's epoch count (its last `count` are averaged; all of them if fewer).
    """

    def __init__(self, model: nn.Module, epochs: int, count: int) -> None:
        if epochs < 1 or count < 1:
            raise ValueError(f"EpochAverage: epochs {epochs} and count {count} must be >= 1")
        self.model, self.first = model, max(1, epochs - count + 1)
        self.averaged = 0  # epochs in the mean so far
        self._mean: dict[str, torch.Tensor] = {}

    def __call__(self, result: EpochResult) -> None:
        if result.epoch < self.first:
            return
        self.averaged += 1
        for name, value in self.model.state_dict().items():
            value = value.detach().to("cpu", copy=True)
            if name not in self._mean or not value.is_floating_point():
                self._mean[name] = value  # integer buffers (none in the RNNs) keep the last
            else:
                self._mean[name] += (value - self._mean[name]) / self.averaged

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Return the averaged weights; ValueError before the first averaged epoch ended."""
        if not self.averaged:
            raise ValueError(f"EpochAverage: no epoch from {self.first} on has ended yet")
        return dict(self._mean)
