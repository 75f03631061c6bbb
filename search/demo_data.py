"""The embedded demo set: synthetic UCF-101-format shards made once when no data is given."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from datasets.synthetic import write_synthetic


@dataclass(frozen=True)
class DemoSpec:
    """Sized so that a 50-trial study runs in minutes on a 2-core CPU."""

    classes: int = 20
    clips_per_class: int = 50
    frames: int = 60
    dim: int = 64
    seed: int = 0

    def key(self) -> str:
        """Return a short hash of the spec, so a changed spec makes a new set."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def ensure_demo_data(root: str | Path = "data/demo", spec: DemoSpec = DemoSpec()) -> str:
    """Return the glob of the demo shards, writing them first if they are not there yet."""
    target = Path(root) / spec.key()
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        write_synthetic(
            staging,
            clips_per_class=spec.clips_per_class,
            frames=spec.frames,
            dim=spec.dim,
            classes=spec.classes,
            seed=spec.seed,
        )
        (staging / "demo.json").write_text(json.dumps(asdict(spec), indent=2))
        try:
            os.rename(staging, target)
        except OSError:  # another worker finished first; its copy is identical
            shutil.rmtree(staging, ignore_errors=True)
    return str(target / "*.tfrecord*")
