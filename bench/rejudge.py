"""Re-judge a finished study under other settings of the paired pruner, on its own curves.

    python bench/rejudge.py --storage sqlite:///sq/default.db --study-name sq_default
                            [--audit sq/default/audit.json] [--startup 5] [--warmup 2]
                            [--rules alpha=0.001 alpha=0.01 metric=loss,alpha=0.05 ...]
                            (keys: alpha, metric, reference, slack, best_so_far)

The replay (bench/pruning_replay.py) trains random configurations on a small set; this reads
the trials a real study trained (TPE's, on the real data, with the per-clip validation outcomes
every trial stores) and asks what each rule would have decided in their place. Trials are
replayed in the order the study ran them: a trial's epochs are spread evenly between its start
and its end, and a trial becomes a reference when it completed, as with several workers. At
every epoch (but a trial's last) each rule judges the trial through the real PairedPruner
against the trials completed under that rule by then.

What it cannot know, and says so: a trial the study pruned that a rule would have kept has no
outcomes past its prune, so the rule's decision ends there; its final value and epochs are the
audit's re-run where the audit chose it (`--audit`), and unknown otherwise (its epochs are then
the audited re-runs' mean, as the search-quality benchmark estimates them, and it is no
reference). TPE's later proposals would have differed under another rule; this replays the
same trials. For each rule it prints: prunes (and the epochs they came at), false prunes (a
pruned trial whose final value is above the median of the trials completed under that rule,
the audit's bar; "?" where the final value is unknown), whether the best trial survives, and
the epochs spent as a share of the same trials without pruning.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from bench.pruning_replay import oracle_bound  # noqa: E402
from search.paired_pruner import PairedPruner  # noqa: E402

DEFAULT_RULES = (
    "alpha=0.001",
    "alpha=0.01",
    "alpha=0.05",
    "metric=loss,alpha=0.001",
    "metric=loss,alpha=0.05",
)
FLOATS = ("alpha", "slack")
KEYS = ("alpha", "metric", "reference", "slack", "best_so_far")
BOOLEANS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


@dataclass(frozen=True)
class _AtEpoch:
    """A trial as the pruner sees it at one of its epochs (what judge() reads)."""

    number: int
    user_attrs: dict[str, Any]
    last_step: int
    intermediate_values: dict[int, float]


class _Completed:
    """The study as the pruner sees it: the trials completed under the rule so far."""

    def __init__(self) -> None:
        self.trials: list[FrozenTrial] = []

    def get_trials(self, deepcopy: bool = False, states: Any = None) -> list[FrozenTrial]:
        return list(self.trials)


@dataclass
class Outcome:
    """What one rule decided over the whole study."""

    rule: str
    pruned: dict[int, int] = field(default_factory=dict)  # trial number -> epoch
    kept_past_data: list[int] = field(default_factory=list)  # study pruned them, the rule did not
    completed: list[int] = field(default_factory=list)


def parse_rule(text: str) -> dict[str, Any]:
    """Return PairedPruner keywords from "key=value,key=value" (the keys in KEYS)."""
    settings: dict[str, Any] = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep or key not in KEYS:
            raise SystemExit(f"rule {text!r}: expected key=value with one of {', '.join(KEYS)}")
        if key == "best_so_far":
            if value.lower() not in BOOLEANS:
                raise SystemExit(f"rule {text!r}: best_so_far is one of {', '.join(BOOLEANS)}")
            settings[key] = BOOLEANS[value.lower()]
        else:
            settings[key] = float(value) if key in FLOATS else value
    return settings


def epoch_times(trial: FrozenTrial) -> list[tuple[float, int]]:
    """Return (time, epoch) for each reported epoch, spread evenly between start and end."""
    start, end = trial.datetime_start, trial.datetime_complete
    epochs = sorted(trial.intermediate_values)
    assert isinstance(start, datetime) and isinstance(end, datetime)
    span = (end - start).total_seconds()
    return [(start.timestamp() + span * (i + 1) / len(epochs), e) for i, e in enumerate(epochs)]


def rejudge(trials: list[FrozenTrial], pruner: PairedPruner, rule: str) -> Outcome:
    """Return what pruner would have decided for trials, replayed in the order they ran."""
    finished = [
        t
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.intermediate_values
    ]
    events = []  # (time, kind, trial number, epoch): kind 0 = an epoch report, 1 = completion
    for t in finished:
        for when, epoch in epoch_times(t):
            events.append((when, 0, t.number, epoch))
        if t.state == TrialState.COMPLETE:
            events.append((t.datetime_complete.timestamp(), 1, t.number, 0))
    events.sort()
    by_number = {t.number: t for t in finished}
    study, outcome = _Completed(), Outcome(rule)
    for _, kind, number, epoch in events:
        trial = by_number[number]
        if number in outcome.pruned:
            continue
        if kind == 1:
            study.trials.append(trial)
            outcome.completed.append(number)
            continue
        last = max(trial.intermediate_values)
        if trial.state == TrialState.COMPLETE and epoch == last:
            continue  # a trial's last epoch is not judged: it ends there anyway
        at_epoch = _AtEpoch(number, trial.user_attrs, epoch, trial.intermediate_values)
        if pruner.prune(study, at_epoch):  # type: ignore[arg-type]
            outcome.pruned[number] = epoch
        elif trial.state == TrialState.PRUNED and epoch == last:
            outcome.kept_past_data.append(number)
    return outcome


@dataclass(frozen=True)
class Unpruned:
    """What each trial would have ended at without pruning, as far as the study tells."""

    final: dict[int, float | None]  # None: pruned and not audited
    epochs: dict[int, float]  # unaudited pruned trials: the audited re-runs' mean

    @classmethod
    def of(cls, trials: list[FrozenTrial], audit: dict[str, Any] | None) -> Unpruned:
        reruns = {r["trial_number"]: r for r in (audit or {}).get("reruns", [])}
        # Failed or unfinished trials are not replayed, so they count on neither side.
        ended = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        complete = [len(t.intermediate_values) for t in ended if t.state == TrialState.COMPLETE]
        fallback = statistics.fmean([r["epochs"] for r in reruns.values()] or complete or [0])
        final: dict[int, float | None] = {}
        epochs: dict[int, float] = {}
        for t in ended:
            if not t.intermediate_values:
                continue
            if t.state == TrialState.COMPLETE:
                final[t.number], epochs[t.number] = t.value, len(t.intermediate_values)
            else:
                rerun = reruns.get(t.number, {})
                final[t.number] = rerun.get("final_value")
                epochs[t.number] = rerun.get("epochs", fallback)
        return cls(final, epochs)


def figures(outcome: Outcome, unpruned: Unpruned) -> dict[str, Any]:
    """Return prunes, false prunes, best kept and epochs of one rule's outcome."""
    final = unpruned.final
    completed = [final[n] for n in outcome.completed + outcome.kept_past_data]
    bar = statistics.median([v for v in completed if v is not None])
    pruned_finals = [final[n] for n in outcome.pruned]
    known = [v for v in final.values() if v is not None]
    best = [n for n, v in final.items() if known and v == max(known)]  # ties: any of them
    spent = sum(outcome.pruned.get(n, 0) or e for n, e in unpruned.epochs.items())
    without = sum(unpruned.epochs.values())
    return {
        "rule": outcome.rule,
        "pruned": len(outcome.pruned),
        "pruned_at": dict(sorted(outcome.pruned.items())),
        "false": sum(v is not None and v > bar for v in pruned_finals),
        "unknown": sum(v is None for v in pruned_finals),
        "median_completed": bar,
        "best_trials": best,
        "best_kept": any(n not in outcome.pruned for n in best),
        "kept_past_data": outcome.kept_past_data,
        "epochs": round(spent, 1),
        "epochs_without_pruning": round(without, 1),
        "share": spent / without if without else None,
    }


def oracle(unpruned: Unpruned, startup: int, epoch: int, false_rate: float) -> str:
    """Return the replay's floor on this study: prune at epoch whatever ends at or below the
    median. A pruned trial without a known final counts as below it (the oracle's favour)."""
    numbers = sorted(unpruned.epochs)
    finals = [unpruned.final[n] for n in numbers]
    share, pruned, false = oracle_bound(
        [-math.inf if v is None else v for v in finals],
        [unpruned.epochs[n] for n in numbers],
        startup,
        epoch,
        false_rate,
    )
    allowed = f"under {false_rate:.0%} false" if false_rate else "no false prune"
    return f"oracle at epoch {epoch}, {allowed}: {pruned} pruned ({false} false), {share:.0%}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--storage", required=True)
    parser.add_argument("--study-name", required=True)
    parser.add_argument("--audit", type=Path, help="the study's audit.json (re-run finals)")
    parser.add_argument("--startup", type=int, default=5, help="pruner.startup_trials")
    parser.add_argument("--warmup", type=int, default=2, help="pruner.warmup_epochs")
    parser.add_argument("--rules", nargs="+", default=list(DEFAULT_RULES))
    parser.add_argument("--json", type=Path, help="write every rule's figures here")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name=args.study_name, storage=args.storage).get_trials()
    audit = json.loads(args.audit.read_text()) if args.audit else None
    unpruned = Unpruned.of(trials, audit)
    rows = []
    print("| rule | pruned (trial@epoch) | false | best kept | epochs / without pruning |")
    print("|---|---|---:|---|---:|")
    for rule in args.rules:
        pruner = PairedPruner(
            **parse_rule(rule), startup_trials=args.startup, warmup_epochs=args.warmup
        )
        row = figures(rejudge(trials, pruner, rule), unpruned)
        rows.append(row)
        at = " ".join(f"{n}@{e}" for n, e in row["pruned_at"].items())
        unknown = f" + {row['unknown']} ?" if row["unknown"] else ""
        kept = f"; kept past data: {row['kept_past_data']}" if row["kept_past_data"] else ""
        print(
            f"| {rule} | {row['pruned']} ({at}){kept} | {row['false']}{unknown} "
            f"(bar {row['median_completed']:.4f}) | {'yes' if row['best_kept'] else 'NO'} | "
            f"{row['epochs']:.0f} / {row['epochs_without_pruning']:.0f} "
            f"({100 * row['share']:.0f} %) |"
        )
    for rate in (0.0, 0.1):
        print(f"# {oracle(unpruned, args.startup, args.warmup, rate)}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
