"""The study definition users edit (studies/*.yaml), loaded and checked into frozen dataclasses."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from search.errors import StudyError

# What the objective knows how to use; anything else in `space` is a typo or a wish.
PARAM_KINDS: dict[str, type] = {
    "cell": str,
    "layers": int,
    "hidden": int,
    "lr": float,
    "clip_norm": float,
    "dropout": float,
    "stride": int,
    "weight_decay": float,
    "batch_size": int,
}
PARAM_LIMITS: dict[str, tuple[float, float]] = {
    "layers": (1, 8),
    "hidden": (1, 8192),
    "lr": (1e-8, 10.0),
    "clip_norm": (1e-6, 1e6),
    "dropout": (0.0, 0.95),
    "stride": (1, 250),
    "weight_decay": (0.0, 1.0),
    "batch_size": (1, 65536),
}
CELLS = ("lstm", "gru")


@dataclass(frozen=True)
class ParamSpec:
    """One searched (or fixed) hyperparameter."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None
    value: Any = None

    @property
    def fixed(self) -> bool:
        return self.choices is None and self.low is None


@dataclass(frozen=True)
class DataSpec:
    pattern: str = "data/ucf101/*"
    split: int = 1
    val_groups: int = 4
    lists_dir: str | None = None
    cache_dir: str = "data/cache"


@dataclass(frozen=True)
class TrainSpec:
    max_epochs: int = 40  # the most epochs a trial trains (YAML also takes `epochs`)
    patience: int = 6  # epochs without a validation gain before a stop; 0 off
    # a gain: a higher val top-1, or at an equal top-1 a val loss lower by this many nats
    min_loss_gain: float = 0.01
    frame_level: bool = False
    explode_grad_norm: float = 1.0e4
    explode_loss: float = 100.0

    @property
    def epochs(self) -> int:
        """The epoch budget, under its older name."""
        return self.max_epochs


PRUNER_KINDS = ("paired", "median", "successive_halving", "hyperband", "none")


@dataclass(frozen=True)
class PrunerSpec:
    kind: str = "paired"
    startup_trials: int = 5
    warmup_epochs: int = 2
    metric: str = "top1"  # paired: what the test judges, top1 | loss
    reference: str = "median"  # paired: the completed trial compared with, median | best
    alpha: float = 0.001  # paired: prune only below this p (and the reference above chance)
    slack: float = 1.0  # paired: judge against the reference at 1/slack of the trial's steps
    best_so_far: bool = False  # paired: judge each trial at its best epoch so far, not its latest
    min_resource: int = 1  # successive_halving / hyperband: epochs of the first rung
    reduction_factor: int = 3  # successive_halving / hyperband


@dataclass(frozen=True)
class SamplerSpec:
    kind: str = "tpe"
    startup_trials: int = 10
    seed: int = 0


@dataclass(frozen=True)
class TrackingSpec:
    project: str = "ucf101-rnn"
    entity: str | None = None


@dataclass(frozen=True)
class StudyDefinition:
    name: str
    space: tuple[ParamSpec, ...]
    data: DataSpec = DataSpec()
    train: TrainSpec = TrainSpec()
    pruner: PrunerSpec = PrunerSpec()
    sampler: SamplerSpec = SamplerSpec()
    tracking: TrackingSpec = TrackingSpec()

    def param(self, name: str) -> ParamSpec:
        """Return the spec of one parameter."""
        return next(p for p in self.space if p.name == name)

    def searched(self) -> list[str]:
        """Return the names of the parameters that are searched, not fixed."""
        return [p.name for p in self.space if not p.fixed]


def load_definition(path: str | Path) -> StudyDefinition:
    """Return the checked study definition in a YAML file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise StudyError(f"study definition {path} does not exist; pass --study FILE") from None
    except yaml.YAMLError as exc:
        raise StudyError(f"study definition {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise StudyError(f"study definition {path} must be a mapping of sections")
    return parse_definition(raw, where=str(path))


def parse_definition(raw: dict[str, Any], where: str = "study definition") -> StudyDefinition:
    """Return the checked study definition in an already parsed mapping."""
    _reject_unknown(raw, {"name", "space", "data", "train", "pruner", "sampler", "tracking"}, where)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise StudyError(f"{where}: 'name' must be a non-empty string")
    space_raw = raw.get("space")
    if not isinstance(space_raw, dict) or not space_raw:
        raise StudyError(f"{where}: 'space' must map parameter names to ranges, choices or values")
    space = tuple(_parse_param(k, v, f"{where}: space.{k}") for k, v in space_raw.items())
    for required in ("cell", "layers", "hidden", "lr", "clip_norm"):
        if required not in space_raw:
            raise StudyError(f"{where}: space.{required} is missing; give a range or a fixed value")
    definition = StudyDefinition(
        name=name,
        space=space,
        data=_section(DataSpec, raw.get("data"), f"{where}: data"),
        train=_section(
            TrainSpec, _train_aliases(raw.get("train"), f"{where}: train"), f"{where}: train"
        ),
        pruner=_section(PrunerSpec, raw.get("pruner"), f"{where}: pruner"),
        sampler=_section(SamplerSpec, raw.get("sampler"), f"{where}: sampler"),
        tracking=_section(TrackingSpec, raw.get("tracking"), f"{where}: tracking"),
    )
    _check_sections(definition, where)
    return definition


def _train_aliases(raw: Any, where: str) -> Any:
    """Return the train section with `epochs` read as max_epochs (its older name)."""
    if not isinstance(raw, dict) or "epochs" not in raw:
        return raw
    if "max_epochs" in raw:
        raise StudyError(f"{where}: give max_epochs or its older name epochs, not both")
    return {("max_epochs" if k == "epochs" else k): v for k, v in raw.items()}


def _reject_unknown(raw: dict[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise StudyError(
            f"{where}: unknown key(s) {', '.join(unknown)}; "
            f"known keys are {', '.join(sorted(known))}"
        )


def _section(cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise StudyError(f"{where} must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _reject_unknown(raw, set(fields), where)
    values = {}
    for key, value in raw.items():
        default = getattr(cls(), key)
        expected = type(default) if default is not None else str
        if value is None and default is None:
            values[key] = None
        elif expected is float and isinstance(value, int) and not isinstance(value, bool):
            values[key] = float(value)
        elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise StudyError(f"{where}.{key} must be {expected.__name__}, got {value!r}")
        else:
            values[key] = value
    return cls(**values)


def _parse_param(name: str, raw: Any, where: str) -> ParamSpec:
    if name not in PARAM_KINDS:
        raise StudyError(f"{where}: unknown parameter; searchable are {', '.join(PARAM_KINDS)}")
    kind = PARAM_KINDS[name]
    if not isinstance(raw, dict):
        _check_value(name, raw, kind, where)
        return ParamSpec(name=name, value=_coerce(raw, kind))
    _reject_unknown(raw, {"low", "high", "log", "step", "choices"}, where)
    if "choices" in raw:
        if set(raw) != {"choices"}:
            raise StudyError(f"{where}: give either choices or low/high, not both")
        choices = raw["choices"]
        if not isinstance(choices, list) or not choices:
            raise StudyError(f"{where}.choices must be a non-empty list")
        for choice in choices:
            _check_value(name, choice, kind, where)
        return ParamSpec(name=name, choices=tuple(_coerce(c, kind) for c in choices))
    if kind is str:
        raise StudyError(f"{where}: {name} takes choices, not a range")
    if "low" not in raw or "high" not in raw:
        raise StudyError(f"{where}: a range needs both low and high")
    low, high = raw["low"], raw["high"]
    _check_value(name, low, kind, where + ".low")
    _check_value(name, high, kind, where + ".high")
    log = bool(raw.get("log", False))
    if low > high:
        raise StudyError(f"{where}: low {low} is above high {high}")
    if log and low <= 0:
        raise StudyError(f"{where}: a log range needs low > 0, got {low}")
    step = raw.get("step")
    if step is not None and (log or not isinstance(step, int | float) or step <= 0):
        raise StudyError(f"{where}.step must be a positive number and cannot go with log")
    return ParamSpec(
        name=name, low=_coerce(low, kind), high=_coerce(high, kind), log=log, step=step
    )


def _check_value(name: str, value: Any, kind: type, where: str) -> None:
    if kind is str:
        if name == "cell" and value not in CELLS:
            raise StudyError(f"{where}: cell must be one of {', '.join(CELLS)}, got {value!r}")
        return
    number_ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not number_ok or (kind is int and not float(value).is_integer()):
        raise StudyError(f"{where}: expected {kind.__name__}, got {value!r}")
    lo, hi = PARAM_LIMITS[name]
    if not (lo <= value <= hi) or math.isnan(value):
        raise StudyError(f"{where}: {value!r} is outside the possible range [{lo}, {hi}]")


def _coerce(value: Any, kind: type) -> Any:
    return kind(value)


def _check_sections(d: StudyDefinition, where: str) -> None:
    checks = [
        (d.data.split in (1, 2, 3), "data.split must be 1, 2 or 3"),
        (1 <= d.data.val_groups <= 10, "data.val_groups must be between 1 and 10"),
        (d.train.max_epochs >= 1, "train.max_epochs (train.epochs in older files) must be >= 1"),
        (d.train.patience >= 0, "train.patience must be >= 0 (0 turns early stopping off)"),
        (
            d.train.min_loss_gain >= 0,
            "train.min_loss_gain must be >= 0 (nats; 0 counts any lower loss as a gain)",
        ),
        (d.train.explode_grad_norm > 0, "train.explode_grad_norm must be above 0"),
        (d.train.explode_loss > 0, "train.explode_loss must be above 0"),
        (d.pruner.kind in PRUNER_KINDS, f"pruner.kind must be one of {', '.join(PRUNER_KINDS)}"),
        (d.pruner.metric in ("top1", "loss"), "pruner.metric must be top1 or loss"),
        (d.pruner.reference in ("median", "best"), "pruner.reference must be median or best"),
        (0 < d.pruner.alpha < 1, "pruner.alpha must be between 0 and 1 (e.g. 0.001)"),
        (d.pruner.slack >= 1, "pruner.slack must be at least 1 (1: no slack, 2: half the steps)"),
        (d.pruner.min_resource >= 1, "pruner.min_resource must be at least 1 epoch"),
        (d.pruner.reduction_factor >= 2, "pruner.reduction_factor must be at least 2"),
        (d.pruner.startup_trials >= 0, "pruner.startup_trials must be >= 0"),
        (d.pruner.warmup_epochs >= 0, "pruner.warmup_epochs must be >= 0"),
        (d.sampler.kind in ("tpe", "random"), "sampler.kind must be tpe or random"),
        (d.sampler.startup_trials >= 0, "sampler.startup_trials must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise StudyError(f"{where}: {message}")
