"""The video classifiers: an LSTM/GRU over per-frame features, and a bag-of-frames baseline.

Both take a right-padded batch, features (batch, time, dim) with zeros beyond each clip's
length, plus lengths (batch,), and return (batch, num_classes + 1) logits; id 0 is the
background class of the original data, so a model never needs to know it is unused.

Why right padding and a gather instead of PackedSequence: on the GPU the padded batch runs
cuDNN's fastest kernels, and packing is markedly slower there; a unidirectional RNN's output
at step t depends only on steps <= t, so reading out at each clip's last real frame gives
exactly what a packed run would (tests/test_rnn.py proves it by padding with zeros).
torch.compile is not used: it does not speed up cuDNN RNNs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
KINDS = ("rnn", "bag")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model (checkpoints store it); defaults: a GRU 2 x 256."""

    kind: str = "rnn"  # 'rnn' | 'bag'
    input_dim: int = 2048
    num_classes: int = 101  # real classes; the model has num_classes + 1 outputs (0 = background)
    cell: str = "gru"  # 'lstm' | 'gru' (ignored by 'bag')
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.0
    frame_level: bool = False  # clip prediction = mean of the real frames' logits

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"ModelSpec.kind must be one of {KINDS}, got {self.kind!r}")
        if self.cell not in CELLS:
            raise ValueError(f"ModelSpec.cell must be one of {tuple(CELLS)}, got {self.cell!r}")
        for name in ("input_dim", "num_classes", "hidden", "layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelSpec.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelSpec.dropout must be in [0, 1), got {self.dropout}")


def frame_mask(lengths: Tensor, time: int) -> Tensor:
    """Return a (batch, time) bool mask, True on each clip's real frames."""
    steps = torch.arange(time, device=lengths.device)  # (time,)
    return steps[None, :] < lengths[:, None]  # (batch, time)


def masked_mean(x: Tensor, lengths: Tensor) -> Tensor:
    """Return the mean of x (batch, time, k) over each clip's real frames: (batch, k)."""
    mask = frame_mask(lengths, x.shape[1])  # (batch, time)
    # masked_fill rather than a multiply: padding may hold anything, and nan * 0 is nan
    total = x.masked_fill(~mask[:, :, None], 0).sum(dim=1)  # (batch, k)
    return total / lengths[:, None].to(total.dtype)


def frame_cross_entropy(frame_logits: Tensor, lengths: Tensor, labels: Tensor) -> Tensor:
    """Return the cross entropy of every real frame against its clip's label (a scalar).

    Frames are averaged within each clip, then clips are averaged, so every clip weighs the
    same as in clip-level training and the two losses are on one scale.
    """
    batch, time, k = frame_logits.shape
    frame_labels = labels[:, None].expand(batch, time)  # (batch, time)
    ce = F.cross_entropy(
        frame_logits.reshape(batch * time, k).float(), frame_labels.reshape(-1), reduction="none"
    ).view(batch, time)  # (batch, time)
    ce = ce.masked_fill(~frame_mask(lengths, time), 0)
    return (ce.sum(dim=1) / lengths.to(ce.dtype)).mean()


class RNNClassifier(nn.Module):
    """LSTM or GRU over the frames, then a linear layer to num_classes + 1 logits."""

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        cell: str = "gru",
        hidden: int = 256,
        layers: int = 2,
        dropout: float = 0.0,
        frame_level: bool = False,
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {tuple(CELLS)}, got {cell!r}")
        self.cell = cell
        self.frame_level = frame_level
        # cuDNN applies `dropout` between stacked layers only (and warns if there is one layer);
        # the same rate on the top layer's output makes it act for one-layer models too.
        self.rnn = CELLS[cell](
            input_dim,
            hidden,
            num_layers=layers,
            batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, num_classes + 1)

    def frame_logits(self, features: Tensor, lengths: Tensor) -> Tensor:
        """Return logits at every step, (batch, time, num_classes + 1); padding steps included."""
        out, _ = self.rnn(features)  # (batch, time, hidden)
        return self.head(self.drop(out))

    def forward(self, features: Tensor, lengths: Tensor) -> Tensor:
        """Return clip logits (batch, num_classes + 1), read out at each clip's last real frame."""
        if self.frame_level:
            # Mean of logits, not of softmax probabilities: it equals the mean of the frames'
            # log-probabilities up to a per-clip constant (softmax ignores it), i.e. a normalised
            # geometric mean of the frames' probabilities; it stays a logits tensor that cross
            # entropy and top-k take as is, with no log of a mean that can underflow in bf16.
            return masked_mean(self.frame_logits(features, lengths), lengths)
        out, _ = self.rnn(features)  # (batch, time, hidden)
        rows = torch.arange(out.shape[0], device=out.device)
        last = out[rows, lengths.to(out.device) - 1]  # (batch, hidden)
        return self.head(self.drop(last))


class BagOfFrames(nn.Module):
    """Order-blind baseline: mean of the real frames' features, then linear."""

    def __init__(self, input_dim: int, num_classes: int, frame_level: bool = False) -> None:
        super().__init__()
        self.frame_level = frame_level  # same predictions either way: the head is affine
        self.head = nn.Linear(input_dim, num_classes + 1)

    def frame_logits(self, features: Tensor, lengths: Tensor) -> Tensor:
        """Return each frame's logits, (batch, time, num_classes + 1); their mean is forward's."""
        return self.head(features)

    def forward(self, features: Tensor, lengths: Tensor) -> Tensor:
        """Return clip logits (batch, num_classes + 1) from the mean of the real frames."""
        return self.head(masked_mean(features, lengths.to(features.device)))


def build_model(spec: ModelSpec) -> nn.Module:
    """Return a freshly initialised model for spec (seed torch beforehand for repeatable init)."""
    if spec.kind == "bag":
        return BagOfFrames(spec.input_dim, spec.num_classes, frame_level=spec.frame_level)
    return RNNClassifier(
        spec.input_dim,
        spec.num_classes,
        cell=spec.cell,
        hidden=spec.hidden,
        layers=spec.layers,
        dropout=spec.dropout,
        frame_level=spec.frame_level,
    )
