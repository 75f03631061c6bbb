"""Creating or resuming the Optuna study a definition describes, without half-writing it."""

from __future__ import annotations

import dataclasses
import json

import optuna

from search.definition import PrunerSpec, SamplerSpec, StudyDefinition
from search.errors import StudyError
from search.paired_pruner import PairedPruner


def make_sampler(spec: SamplerSpec, seed: int) -> optuna.samplers.BaseSampler:
    """Return the seeded sampler of the definition."""
    if spec.kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.startup_trials)


def make_pruner(
    spec: PrunerSpec, enabled: bool, max_epochs: int | None = None
) -> optuna.pruners.BasePruner:
    """Return the pruner of the definition (max_epochs: Hyperband's max_resource), or none."""
    if not enabled or spec.kind == "none":
        return optuna.pruners.NopPruner()
    if spec.kind == "paired":
        return PairedPruner(
            metric=spec.metric,
            reference=spec.reference,
            alpha=spec.alpha,
            slack=spec.slack,
            best_so_far=spec.best_so_far,
            startup_trials=spec.startup_trials,
            warmup_epochs=spec.warmup_epochs,
        )
    if spec.kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=spec.min_resource, reduction_factor=spec.reduction_factor
        )
    if spec.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=spec.min_resource,
            max_resource=max_epochs or "auto",
            reduction_factor=spec.reduction_factor,
        )
    return optuna.pruners.MedianPruner(
        n_startup_trials=spec.startup_trials, n_warmup_steps=spec.warmup_epochs
    )


def open_study(
    name: str,
    storage: optuna.storages.BaseStorage,
    definition: StudyDefinition,
    *,
    seed: int,
    prune: bool,
    feature_dim: int,
    fingerprint: str,
    max_epochs: int | None = None,
) -> optuna.Study:
    """Return the study, created on first use; StudyError if it exists for other data.

    max_epochs: the trials' epoch budget when it is not the definition's (--epochs).
    """
    sampler = make_sampler(definition.sampler, seed)
    pruner = make_pruner(definition.pruner, prune, max_epochs or definition.train.max_epochs)
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        study = None
    if study is not None:
        known_dim = study.user_attrs.get("feature_dim")
        if known_dim is not None and known_dim != feature_dim:
            raise StudyError(
                f"study {name!r} was searched on {known_dim}-d features but the data has "
                f"{feature_dim}-d features; use another --study-name or the original data"
            )
        if study.user_attrs.get("data_fingerprint") not in (None, fingerprint):
            # Same shape, other files: allowed (e.g. shards moved), but worth a visible note.
            study.set_user_attr("data_fingerprint_changed", fingerprint)
        return study
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction="maximize",
        load_if_exists=True,
    )
    study.set_user_attr("feature_dim", feature_dim)
    study.set_user_attr("data_fingerprint", fingerprint)
    study.set_user_attr("seed", seed)
    study.set_user_attr("definition", json.loads(json.dumps(dataclasses.asdict(definition))))
    return study
