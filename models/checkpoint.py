"""Save and load a trained model: its ModelSpec, its weights and free-form metadata.

The file is a torch.save of plain values and tensors only, so loading uses
`weights_only=True` and never runs code from the file.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from datasets.errors import UserError
from models.rnn import ModelSpec, build_model

FORMAT = 1  # bump when the layout below changes


class CheckpointError(UserError):
    """A checkpoint file that cannot be read; the message says which and why."""


def _plain(value: Any, where: str) -> Any:
    """Return value with numpy turned into Python; TypeError on anything not plain data."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if value is None or isinstance(value, str | int | float | bool | torch.Tensor):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(
        f"checkpoint extra{where} is a {type(value).__name__}; store plain values "
        "(str, int, float, bool, None, lists, dicts, tensors) so loading needs no code"
    )


def save_checkpoint(
    path: str | Path, model: nn.Module, spec: ModelSpec, extra: dict | None = None
) -> None:
    """Write spec, the model's weights (on CPU) and extra to path, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "spec": dataclasses.asdict(spec),
        "state_dict": {k: v.detach().to("cpu") for k, v in model.state_dict().items()},
        "extra": _plain(extra or {}, ""),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)  # readers never see half a file
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelSpec, dict]:
    """Return the rebuilt model (eval mode, on device), its spec and the extra metadata."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; write one with "
            f"python -m models.train_cli --out {path}"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"not a format-{FORMAT} checkpoint of this project")
        spec = ModelSpec(**payload["spec"])
        model = build_model(spec)
        model.load_state_dict(payload["state_dict"])
    except Exception as e:  # pickle, zip, key and shape errors all mean the same to a user
        raise CheckpointError(
            f"cannot read checkpoint {path}: {e}; pass a file written by python -m models.train_cli"
        ) from e
    return model.to(device).eval(), spec, payload["extra"]
