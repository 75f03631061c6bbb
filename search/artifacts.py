"""The best trial's files as Optuna artifacts: a confusion-matrix PNG and the checkpoint."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import optuna
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact
from optuna.trial import FrozenTrial
from PIL import Image, ImageDraw, ImageFont

from search import optuna_internals

logger = logging.getLogger(__name__)

# Viridis at 9 stops (from matplotlib's table): readable in grey and for colour-blind readers.
_VIRIDIS = np.array(
    [
        [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
        [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37],
    ],
    dtype=np.float64,
)  # fmt: skip
_MAX_SIDE_PX = 1300  # the whole matrix fits a laptop screen
_MIN_LABEL_PX = 7  # smaller text is unreadable, so labels are left off below this


def row_normalised(confusion: np.ndarray) -> np.ndarray:
    """Return the confusion matrix with each row divided by its sum (empty rows stay 0)."""
    conf = np.asarray(confusion, dtype=np.float64)
    sums = conf.sum(axis=1, keepdims=True)
    return np.divide(conf, sums, out=np.zeros_like(conf), where=sums > 0)


def render_confusion_png(
    confusion: np.ndarray, class_names: Sequence[str], path: str | Path
) -> Path:
    """Write a row-normalised confusion heatmap PNG (rows true, cols predicted); return its path."""
    conf = np.asarray(confusion)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {conf.shape}")
    n = conf.shape[0]
    if len(class_names) != n:
        raise ValueError(
            f"{len(class_names)} class names for a {n}x{n} confusion matrix; pass one name per "
            "class id (index 0 = background)"
        )
    cell = int(np.clip(_MAX_SIDE_PX // max(n, 1), 3, 48))
    font_px = min(cell - 1, 14)
    labels = font_px >= _MIN_LABEL_PX
    font = ImageFont.load_default(size=font_px) if labels else None
    small = ImageFont.load_default(size=12)
    title_font = ImageFont.load_default(size=16)

    names = [f"{i} {name}" for i, name in enumerate(class_names)]
    label_w = max((int(font.getlength(s)) for s in names), default=0) + 6 if labels else 0
    title_h, pad, bar_w = 48 if labels else 64, 12, 60
    grid = n * cell
    left, top = pad + label_w, title_h + label_w
    width = left + grid + pad + bar_w
    height = top + grid + pad + 22
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    norm = row_normalised(conf)
    pixels = _colormap(norm).repeat(cell, axis=0).repeat(cell, axis=1)
    image.paste(Image.fromarray(pixels, "RGB"), (left, top))

    title = "Confusion matrix (each row normalised to 1)"
    draw.text((pad, 8), title, fill="black", font=title_font)
    draw.text((pad, 28), "rows: true class · columns: predicted class", fill="#444", font=small)
    if labels:
        for i, name in enumerate(names):
            y = top + i * cell + (cell - font_px) // 2 - 1
            draw.text((left - 4, y), name, fill="black", font=font, anchor="ra")
        # Column labels: drawn horizontally on a strip, then rotated to read bottom-up.
        strip = Image.new("RGB", (label_w, grid), "white")
        strip_draw = ImageDraw.Draw(strip)
        for i, name in enumerate(names):
            y = i * cell + (cell - font_px) // 2 - 1
            strip_draw.text((4, y), name, fill="black", font=font)
        image.paste(strip.transpose(Image.Transpose.ROTATE_90), (left, title_h))
    else:
        draw.text((left, top - 16), f"{n} classes, ids 0..{n - 1}", fill="#444", font=small)
    _draw_colour_bar(draw, image, x=left + grid + pad, top=top, height=min(grid, 300), font=small)

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG", optimize=True)
    return out


def _colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to viridis RGB uint8, shape (*values.shape, 3)."""
    pos = np.clip(values, 0.0, 1.0) * (len(_VIRIDIS) - 1)
    stops = np.arange(len(_VIRIDIS))
    rgb = np.stack([np.interp(pos, stops, _VIRIDIS[:, c]) for c in range(3)], axis=-1)
    return rgb.round().astype(np.uint8)


def _draw_colour_bar(
    draw: ImageDraw.ImageDraw, image: Image.Image, *, x: int, top: int, height: int, font
) -> None:
    ramp = np.linspace(1.0, 0.0, max(height, 2))[:, None].repeat(16, axis=1)  # (height, 16)
    image.paste(Image.fromarray(_colormap(ramp), "RGB"), (x, top))
    draw.rectangle((x, top, x + 15, top + height - 1), outline="black")
    for frac, text in ((0.0, "1.0"), (0.5, "0.5"), (1.0, "0.0")):
        y = top + int(frac * (height - 1))
        draw.line((x + 16, y, x + 20, y), fill="black")
        draw.text((x + 23, y), text, fill="black", font=font, anchor="lm")


def attach_best_artifacts(
    study: optuna.Study,
    trial: int | FrozenTrial | optuna.Trial,
    files: Sequence[str | Path],
    artifact_dir: str | Path,
) -> list[str]:
    """Upload files as Optuna artifacts for one trial (int = trial number); return their ids.

    A running trial gets them as its own artifacts. A finished trial cannot take new attributes
    in Optuna's storages (UpdateFinishedTrialError), so its files go to the study, uploaded as
    `trial<N>-<name>` so the dashboard's study page says whose they are. Serve them with
    `optuna-dashboard <storage URL> --artifact-dir <artifact_dir>`. A file whose upload name and
    bytes are already there is not uploaded again (a resumed study re-attaches the same files).
    """
    paths = [Path(f) for f in files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"cannot attach artifacts, no such file(s): {', '.join(missing)}")
    storage = optuna_internals.storage(study)
    target = _frozen_trial(study, trial)
    owner: optuna.Study | FrozenTrial = target
    prefix = ""
    if target.state.is_finished():
        owner, prefix = study, f"trial{target.number}-"
    store_dir = Path(artifact_dir)
    store_dir.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(store_dir)

    attached = {m.filename: m.artifact_id for m in get_all_artifact_meta(owner, storage=storage)}
    ids = []
    with tempfile.TemporaryDirectory(dir=store_dir, prefix=".upload-") as tmp:
        for path in paths:
            name = prefix + path.name
            existing = attached.get(name)
            if existing is not None and _same_bytes(store_dir / existing, path):
                ids.append(existing)
                continue
            # upload_artifact names the artifact after the file, hence a link under the new name.
            upload_path = path if not prefix else _link_or_copy(path, Path(tmp) / name)
            artifact_id = upload_artifact(
                artifact_store=store,
                file_path=str(upload_path),
                study_or_trial=owner,
                storage=storage,
            )
            logger.info("attached %s for trial %d as artifact %s", path, target.number, artifact_id)
            attached[name] = artifact_id
            ids.append(artifact_id)
    return ids


def _frozen_trial(study: optuna.Study, trial: int | FrozenTrial | optuna.Trial) -> FrozenTrial:
    if isinstance(trial, FrozenTrial):
        # Read again: the caller's copy may predate the trial's end.
        return optuna_internals.frozen_trial(study, optuna_internals.trial_id(trial))
    number = trial.number if isinstance(trial, optuna.Trial) else int(trial)
    try:
        trial_id = optuna_internals.trial_id_by_number(study, number)
    except KeyError as e:
        raise ValueError(f"study {study.study_name!r} has no trial number {number}") from e
    return optuna_internals.frozen_trial(study, trial_id)


def _link_or_copy(source: Path, target: Path) -> Path:
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or links not allowed there
        shutil.copyfile(source, target)
    return target


def _same_bytes(stored: Path, path: Path) -> bool:
    if not stored.is_file() or stored.stat().st_size != path.stat().st_size:
        return False
    return _sha256(stored) == _sha256(path)


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
