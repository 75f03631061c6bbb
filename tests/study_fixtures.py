"""Tiny real studies for tests: synthetic shards in the exact format and a fast definition."""

from __future__ import annotations

from pathlib import Path

import yaml

from datasets.synthetic import write_synthetic

TINY_DEFINITION = {
    "name": "tiny",
    "data": {"split": 1, "val_groups": 4},
    "space": {
        "cell": {"choices": ["lstm", "gru"]},
        "layers": {"low": 1, "high": 2},
        "hidden": {"low": 8, "high": 24, "log": True},
        "lr": {"low": 3e-3, "high": 3e-2, "log": True},
        "clip_norm": {"low": 0.5, "high": 5.0, "log": True},
        "batch_size": 32,
    },
    "train": {"epochs": 3},
    "pruner": {"kind": "median", "startup_trials": 2, "warmup_epochs": 1},
    "sampler": {"kind": "tpe", "startup_trials": 3, "seed": 7},
    "tracking": {"project": "tiny-tests"},
}


def write_tiny_data(root: Path, dim: int = 8, classes: int = 3) -> str:
    """Write a few classes of short synthetic clips; return their glob."""
    out = root / f"data-{dim}d"
    if not out.exists():
        write_synthetic(
            out,
            clips_per_class=25,
            frames=12,
            dim=dim,
            classes=classes,
            seed=3,
            shard_size=40,
            workers=1,
        )
    return str(out / "*.tfrecord*")


def write_definition(root: Path, **changes) -> Path:
    """Write the tiny definition (top-level sections replaced by `changes`); return its path."""
    definition = {**TINY_DEFINITION, **changes}
    definition["data"] = {**definition["data"], "cache_dir": str(root / "cache")}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(definition))
    return path


def study_args(root: Path, data: str, *extra: str, name: str = "tiny") -> list[str]:
    """Return run_study.py flags for a tiny study kept entirely under root."""
    return [
        "--study",
        str(write_definition(root)),
        "--study-name",
        name,
        "--storage",
        f"sqlite:///{root / 'study.db'}",
        "--data",
        data,
        "--out-dir",
        str(root / "runs" / name),
        "--device",
        "cpu",
        "--wandb-mode",
        "disabled",
        *extra,
    ]
