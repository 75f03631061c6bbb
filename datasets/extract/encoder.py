"""The frame encoder: a torchvision ResNet up to its average pool, its weights, and batching."""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

from datasets.errors import DataError

MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


RANDOM_INIT_SEED = 0


class WeightsNotFound(DataError):
    """Pretrained weights are neither in the torch hub cache nor given with --weights."""


def weight_files(model: str) -> list[str]:
    """Return the torchvision checkpoint file names of the model's ImageNet weights, best first."""
    enum = torchvision.models.get_model_weights(model)
    ordered = [enum.DEFAULT, *(w for w in enum if w is not enum.DEFAULT)]
    return [w.url.rsplit("/", 1)[-1] for w in ordered]


def find_cached_weights(model: str) -> Path | None:
    """Return the model's ImageNet weights from the torch hub cache, or None when not there."""
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    for name in weight_files(model):
        if (checkpoints / name).is_file():
            return checkpoints / name
    return None


def _missing_weights_message(model: str) -> str:
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    name = weight_files(model)[0]
    return (
        f"no pretrained {model} weights in the torch hub cache ({checkpoints}/{name} or "
        f"{' / '.join(weight_files(model)[1:]) or 'older versions'}) and this tool never downloads;"
        f" on a machine with internet run `curl -LO https://download.pytorch.org/models/{name}`, "
        f"copy the file to {checkpoints}/ here, or pass --weights PATH/{name}"
    )


class FrameEncoder(nn.Module):
    """ImageNet ResNet up to its global average pool: uint8 (B, H, W, 3) -> float32 (B, dim)."""

    def __init__(self, net: torchvision.models.ResNet):
        super().__init__()
        self.feature_dim: int = net.fc.in_features
        net.fc = nn.Identity()
        # Pool in float32 even under bf16 autocast: the features are the product, and a bf16
        # mean keeps only 3 significant digits.
        net.avgpool = _MeanPoolFloat32()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        # permute of NHWC is already channels_last in memory: no copy before the float cast.
        x = frames.permute(0, 3, 1, 2).float()  # (batch, 3, H, W), channels_last strides
        x = (x - self.mean) / self.std
        return self.net(x.contiguous(memory_format=torch.channels_last)).float()


class _MeanPoolFloat32(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mean(dim=(2, 3), keepdim=True)  # (batch, channels, 1, 1)


def load_encoder(
    model: str, weights: Path | None = None, random_init: bool = False
) -> tuple[FrameEncoder, str]:
    """Return the frame encoder on the CPU in eval mode and a description of its weights.

    Weights come from `weights`, else the torch hub cache; random_init gives seeded random ones
    (for tests and benchmarks). Never downloads: raises WeightsNotFound instead.
    """
    if model not in MODELS:
        raise DataError(f"--model {model!r} is not supported; choose one of {', '.join(MODELS)}")
    if random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)  # same features on a resumed run
            net = torchvision.models.get_model(model, weights=None)
        return FrameEncoder(net).eval(), f"random-init (seed {RANDOM_INIT_SEED})"
    path = weights if weights is not None else find_cached_weights(model)
    if path is None:
        raise WeightsNotFound(_missing_weights_message(model))
    if not path.is_file():
        raise DataError(f"--weights {str(path)!r} does not exist; give the path of a .pth file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types on a bad file
        raise DataError(
            f"cannot load weights {str(path)!r}: {err}; is it a torch .pth file?"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    net = torchvision.models.get_model(model, weights=None)
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()[0:2]
        raise DataError(
            f"weights {str(path)!r} do not fit torchvision {model}: {' '.join(first)}; "
            f"give --model the architecture the file was saved from"
        ) from None
    return FrameEncoder(net).eval(), f"{path.name} ({_sha256(path)[:12]})"


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class ClipBatcher:
    """Runs `embed` on fixed-size batches of frames drawn from consecutive clips.

    Clips go in whole, frames are batched across clip boundaries (so a 256-frame batch is full
    even with 250-frame clips), and each clip's features come out, in order, once all of its
    frames have been through `embed`.
    """

    def __init__(self, embed: Callable[[torch.Tensor], torch.Tensor], batch_size: int):
        self.embed, self.batch_size = embed, batch_size
        self._frames: list[torch.Tensor] = []  # waiting for the CNN
        self._n_frames = 0
        self._clips: deque[tuple[int, int]] = deque()  # (key, frames) not yet handed out
        self._done: list[torch.Tensor] = []  # features not yet handed out
        self._n_done = 0

    def add(self, key: int, frames: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """Queue one clip's frames; return the (key, features) of the clips now finished."""
        self._frames.append(frames)
        self._n_frames += len(frames)
        self._clips.append((key, len(frames)))
        while self._n_frames >= self.batch_size:
            self._run(self.batch_size)
        return self._finished()

    def flush(self) -> list[tuple[int, torch.Tensor]]:
        """Run the frames left over; return the (key, features) of all remaining clips."""
        if self._n_frames:
            self._run(self._n_frames)
        return self._finished()

    def _run(self, n: int) -> None:
        pending = torch.cat(self._frames) if len(self._frames) > 1 else self._frames[0]
        self._frames = [pending[n:]] if len(pending) > n else []
        self._n_frames -= n
        self._done.append(self.embed(pending[:n]))
        self._n_done += n

    def _finished(self) -> list[tuple[int, torch.Tensor]]:
        out = []
        while self._clips and self._clips[0][1] <= self._n_done:
            key, n = self._clips.popleft()
            done = torch.cat(self._done) if len(self._done) > 1 else self._done[0]
            out.append((key, done[:n]))
            self._done = [done[n:]] if len(done) > n else []
            self._n_done -= n
        return out
