"""Search: everything Optuna (definition, objective, pruners, worker loop, storage, tracking,
refit, audit, protocol, report).

The public names are listed here so `from search import run_trials` shows the API; they are
imported on first use (PEP 562), so the worker loop never pulls in torch or W&B through here.
"""

from importlib import import_module
from typing import Any

_PUBLIC = {
    "StudyError": "errors",
    "TrialFailed": "errors",
    "TrialInterrupted": "errors",
    "StudyDefinition": "definition",
    "load_definition": "definition",
    "TrialSettings": "objective",
    "PairedPruner": "paired_pruner",
    "make_pruner": "study",
    "make_sampler": "study",
    "open_study": "study",
    "open_storage": "storage",
    "redact_url": "storage",
    "run_trials": "runner",
    "score_best": "final",
    "refit_and_score": "refit",
    "audit_study": "audit",
    "evaluate_splits": "protocol",
    "write_report": "report",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'search' has no attribute {name!r}")
    return getattr(import_module(f"search.{_PUBLIC[name]}"), name)
