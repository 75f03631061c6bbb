"""What a person reads: one line per finished trial and the end-of-study summary (as text)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.storage import redact_url


def format_params(params: dict[str, Any]) -> str:
    """Return params as short key=value pairs."""
    return " ".join(f"{k}={_short(v)}" for k, v in params.items())


def trial_line(t: FrozenTrial) -> str:
    """Return the one line printed when a trial finishes."""
    value = "-" if t.value is None else f"{t.value:.4f}"
    seconds = t.user_attrs.get("wall_s")
    if seconds is None and t.datetime_complete and t.datetime_start:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds()
    epochs = t.user_attrs.get("epochs_run", len(t.intermediate_values))
    line = (
        f"trial {t.number:>3} {t.state.name:<8} val_top1={value} epochs={epochs} "
        f"{seconds or 0:.1f}s  {format_params(t.params)}"
    )
    prune = t.user_attrs.get("prune_reason") or {}
    reason = prune.get("text") or t.user_attrs.get("fail_reason")
    return f"{line}  ({reason})" if reason else line


def summary(
    study: optuna.Study,
    *,
    wall_s: float,
    outcome: str,
    storage_url: str,
    where: dict[str, str],
    dashboard_cmd: str,
    sync_cmd: str | None,
    final_is_new: bool = True,
) -> str:
    """Return the end-of-run summary: best trial, states, time, files and next commands.

    final_is_new: this run scored the test groups; else the stored scores are labelled as
    scored earlier (by another worker or run), so one score is never announced twice.
    """
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    lines = [
        "",
        f"study {study.study_name!r}: {len(trials)} trials "
        + "("
        + ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
        + ")"
        + f", this run {wall_s:.0f}s, ended by {outcome}",
    ]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        lines.append(
            f"best trial {best.number}: val_top1={best.value:.4f}  {format_params(best.params)}"
        )
    else:
        lines.append("no trial has completed yet")
    final = study.user_attrs.get("final")
    if final:
        best_number = study.best_trial.number if complete else None
        lines.append(_final_line(final, best_number, final_is_new))
    baseline = study.user_attrs.get("baseline")
    if baseline and baseline.get("diverged"):
        lines.append(f"bag-of-frames baseline: diverged ({baseline['diverged']})")
    elif baseline:
        lines.append(
            f"bag-of-frames baseline: val_top1={baseline['bag_of_frames_val_top1']:.4f} "
            f"test_top1={baseline['bag_of_frames_test_top1']:.4f}"
        )
    lines.append(f"storage: {redact_url(storage_url)}")
    lines.extend(f"{k}: {v}" for k, v in where.items())
    lines.append(f"watch it: {dashboard_cmd}")
    if sync_cmd:
        lines.append(f"upload the offline W&B runs: {sync_cmd}")
    return "\n".join(lines)


def _final_line(final: dict[str, Any], best_number: int | None, is_new: bool) -> str:
    test = final["test"]
    notes = [f"trial {final['trial_number']}", f"weights {final['weights']}"]
    if not is_new:
        notes.append("scored earlier")
    if final["trial_number"] != best_number:
        notes.append(f"not the best trial {best_number}: scored when the study finishes")
    line = f"test groups ({', '.join(notes)}): top1={test['top1']:.4f} top5={test['top5']:.4f}"
    refit = final.get("refit")
    if isinstance(refit, dict) and isinstance(refit.get("test"), dict):
        line += f"; refit on train+val: top1={refit['test']['top1']:.4f}"
    return line


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)
