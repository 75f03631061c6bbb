"""Which pruning rule to trust: train trials to their full budget once, replay every rule offline.

    python bench/pruning_replay.py [--trials 10] [--epochs 12] [--classes 12] [--clips 30]
                                   [--frames 40] [--dim 32] [--seed 0] [--threads 2]
                                   [--patience 6 [--min-loss-gain 0 0.01]] [--curves FILE.npz]

1. Writes a small synthetic UCF-101 set whose classes differ in the order of their events
   (datasets.synthetic.write_synthetic), splits it as a study does (split 1, 4 val groups).
2. Samples --trials configurations from the shipped study's space (random sampler, seeded)
   and trains each for --epochs epochs WITHOUT pruning or early stopping, keeping every
   epoch's per-clip validation outcomes (right/wrong and loss).
3. Replays each rule on those curves through the real Optuna pruners, in trial order as a
   sequential study would (a pruned trial is not a reference for later ones): median,
   paired on top-1 and on loss at a few alphas (trials paired at equal optimizer steps, and
   once at equal epochs, the rule before steps were kept), paired with a few slacks (the
   reference read at 1/slack of the steps), successive halving, Hyperband.

For each rule it prints: trials pruned; false prunes, a pruned trial whose final value (its best
validation top-1 over the full budget) beats the median of all final values; "false*", the
same against the median of the trials that completed under that rule (the issue's and the
audit's definition: the bar rises as the rule prunes more of the lower half); whether the best
trial survived; and the epochs spent as a share of training every trial to the end. With
--patience P it prints the table again with every curve cut where the study's patience rule
(P epochs without a higher top-1 or, at an equal top-1, a loss lower by --min-loss-gain; one
table per gain given) would have stopped it: the budget a real study has, so "epochs" is then
the share of an unpruned study with the same patience.
Under each table, the bound: what an oracle that knows every final value would spend, pruning
each trial that ends at or below the median at the warmup epoch (or 2 epochs later), with no
false prune or with under 10 % of them. Since a false prune is one above the median, the upper
half of the trials always runs its whole curve, and no rule's epochs can go below this line.
About 2 minutes on 2 busy CPU cores at the defaults; the lead reruns it bigger. With --curves
the trained curves are written to FILE.npz, or read back from it when it exists (and was made
with the same data and training arguments), so a new rule is replayed in seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import numpy as np
import optuna
import torch

from datasets.batches import BatchLoader
from datasets.synthetic import write_synthetic
from models.early_stopping import EarlyStopping
from models.rnn import ModelSpec, build_model
from models.training import EpochResult, TrainConfig, TrainingDiverged, train
from search.clip_outcomes import CLASSES_KEY, STEPS_KEY, outcome_attrs
from search.definition import DataSpec, PrunerSpec, load_definition
from search.manifest import trial_seed
from search.space import suggest
from search.study import make_pruner
from search.study_data import load_study_data

STUDY = Path(__file__).resolve().parents[1] / "studies" / "ucf101_rnn.yaml"


@dataclass
class Curve:
    """One trial trained to the full budget: its params and per-epoch validation outcomes."""

    params: dict
    top1: list[float]
    correct: list[np.ndarray]
    loss: list[np.ndarray]
    mean_loss: list[float] = field(default_factory=list)  # the trainer's tie-break for patience
    steps_per_epoch: int = 0
    diverged: bool = False  # stopped by divergence: pruned at once under every rule alike

    @property
    def final(self) -> float:
        return max(self.top1) if self.top1 else 0.0


def train_curves(args: argparse.Namespace, root: Path) -> tuple[list[Curve], int]:
    """Return every sampled trial's full learning curve and the validation classes."""
    write_synthetic(
        root / "shards",
        clips_per_class=args.clips,
        frames=args.frames,
        dim=args.dim,
        classes=args.classes,
        seed=args.seed,
        workers=1,
    )
    data = load_study_data(
        DataSpec(cache_dir=str(root / "cache")), str(root / "shards" / "*.tfrecord*"), demo=False
    )
    classes = len(np.unique(data.features.labels[data.parts["val"]]))
    print(
        f"# data: {args.classes} classes, train {len(data.parts['train'])} / val "
        f"{len(data.parts['val'])} clips, {args.frames} frames, {args.dim}-d"
    )
    definition = load_definition(STUDY)
    sampler = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=args.seed))
    curves = []
    for number in range(args.trials):
        trial = sampler.ask()
        params = suggest(trial, definition)
        seed = trial_seed(args.seed, number)
        torch.manual_seed(seed)
        model = build_model(
            ModelSpec(
                kind="rnn",
                input_dim=args.dim,
                num_classes=data.num_classes,
                cell=params["cell"],
                hidden=int(params["hidden"]),
                layers=int(params["layers"]),
                dropout=float(params.get("dropout", 0.0)),
            )
        )
        train_loader, val_loader = (
            BatchLoader(
                data.features,
                data.parts[part],
                int(params.get("batch_size", 64)),
                stride=int(params.get("stride", 1)),
                shuffle=part == "train",
                bucket=part == "train",
                seed=seed,
            )
            for part in ("train", "val")
        )
        curve = Curve(params, [], [], [], steps_per_epoch=len(train_loader))

        def keep(r: EpochResult, curve: Curve = curve) -> None:
            curve.top1.append(r.val_top1)
            curve.correct.append(r.val_correct)
            curve.loss.append(r.val_clip_loss)
            curve.mean_loss.append(r.val_loss)

        config = TrainConfig(
            lr=float(params["lr"]),
            clip_norm=float(params["clip_norm"]),
            weight_decay=float(params.get("weight_decay", 0.0)),
            epochs=args.epochs,
            seed=seed,
            explode_grad_norm=1e4,
            explode_loss=100.0,
        )
        start = time.perf_counter()
        try:
            train(model, train_loader, val_loader, config, on_epoch=keep)
        except TrainingDiverged:
            curve.diverged = True
        sampler.tell(trial, curve.final)
        searched = " ".join(
            f"{k}={_short(v)}" for k, v in params.items() if k in definition.searched()
        )
        print(
            f"# trial {number:2d}: final {curve.final:.3f}  curve "
            + " ".join(f"{v:.2f}" for v in curve.top1)
            + f"  ({time.perf_counter() - start:.0f}s{', diverged' if curve.diverged else ''}) "
            + searched
        )
        curves.append(curve)
    return curves, classes


# The arguments that decide the curves: a saved file made with others is refused.
CURVE_ARGS = ("trials", "epochs", "classes", "clips", "frames", "dim", "seed")


def save_curves(path: Path, curves: list[Curve], classes: int, args: argparse.Namespace) -> None:
    """Write curves to path (.npz): per-clip outcomes as arrays, the rest as JSON."""
    meta = {
        "args": {k: getattr(args, k) for k in CURVE_ARGS},
        "classes": classes,
        "curves": [
            {
                "params": c.params,
                "top1": c.top1,
                "mean_loss": c.mean_loss,
                "steps_per_epoch": c.steps_per_epoch,
                "diverged": c.diverged,
            }
            for c in curves
        ],
    }
    arrays = {}
    for i, c in enumerate(curves):
        if c.top1:  # a trial that diverged in epoch 1 has no outcomes
            arrays[f"correct_{i}"] = np.stack(c.correct)
            arrays[f"loss_{i}"] = np.stack(c.loss)
    np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)


def load_curves(path: Path, args: argparse.Namespace) -> tuple[list[Curve], int]:
    """Return the curves and validation classes saved at path; SystemExit if args differ."""
    with np.load(path) as saved:
        meta = json.loads(str(saved["meta"]))
        wanted = {k: getattr(args, k) for k in CURVE_ARGS}
        if meta["args"] != wanted:
            raise SystemExit(
                f"{path}: curves were trained with {meta['args']}, not {wanted}; "
                "pass the same arguments or another --curves file"
            )
        curves = []
        for i, c in enumerate(meta["curves"]):
            n = len(c["top1"])
            correct = list(saved[f"correct_{i}"]) if n else []
            loss = list(saved[f"loss_{i}"]) if n else []
            curves.append(
                Curve(
                    c["params"],
                    c["top1"],
                    correct,
                    loss,
                    mean_loss=c["mean_loss"],
                    steps_per_epoch=c["steps_per_epoch"],
                    diverged=c["diverged"],
                )
            )
    return curves, meta["classes"]


def cut_by_patience(curve: Curve, patience: int, min_loss_gain: float = 0.0) -> Curve:
    """Return the curve up to the epoch where models.training's patience rule stops it."""
    stopping, end = EarlyStopping(patience, min_loss_gain), len(curve.top1)
    for epoch, (top1, loss) in enumerate(zip(curve.top1, curve.mean_loss, strict=True), start=1):
        stopping.update(epoch, top1, loss)
        if epoch < end and stopping.should_stop(epoch):
            end = epoch
            break
    return replace(
        curve,
        top1=curve.top1[:end],
        correct=curve.correct[:end],
        loss=curve.loss[:end],
        mean_loss=curve.mean_loss[:end],
    )


def oracle_share(
    curves: list[Curve], startup: int, epoch: int, false_rate: float = 0.0
) -> tuple[float, int, int]:
    """Return the least share of epochs any rule can spend on curves (see oracle_bound)."""
    return oracle_bound(
        [c.final for c in curves], [len(c.top1) for c in curves], startup, epoch, false_rate
    )


def oracle_bound(
    finals: list[float], lengths: list[float], startup: int, epoch: int, false_rate: float = 0.0
) -> tuple[float, int, int]:
    """Return the least share of epochs any rule can spend, and its prunes and false prunes.

    The oracle knows every final value (trials in study order, each training lengths[i] epochs
    unpruned): after the `startup` trials (which complete, as under every rule), it prunes at
    `epoch` each trial that finishes at or below the median, plus the longest-running trials
    above it while false prunes stay under `false_rate` of the prunes (0: none). No rule that
    must wait for evidence can spend less.
    """
    median = statistics.median(finals)
    later = range(startup, len(finals))
    true = [i for i in later if finals[i] <= median]
    above = sorted((i for i in later if finals[i] > median), key=lambda i: -lengths[i])
    false = 0
    while false < len(above) and (false + 1) < false_rate * (len(true) + false + 1):
        false += 1
    pruned = set(true) | set(above[:false])
    spent = sum(min(epoch, n) if i in pruned else n for i, n in enumerate(lengths))
    return spent / sum(lengths), len(pruned), false


def _short(v: object) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def replay(
    curves: list[Curve], pruner: optuna.pruners.BasePruner, classes: int, by_steps: bool = True
) -> list[int]:
    """Return the epoch each trial ends at under pruner, negative where it was not pruned.

    by_steps=False withholds the steps per epoch: the paired rule then pairs equal epochs.
    """
    # A fixed name: Hyperband assigns brackets by a checksum of the study's name.
    study = optuna.create_study(study_name="replay", direction="maximize", pruner=pruner)
    ends = []
    for curve in curves:
        trial = study.ask()
        trial.set_user_attr(CLASSES_KEY, classes)
        if by_steps:
            trial.set_user_attr(STEPS_KEY, curve.steps_per_epoch)
        end, pruned = len(curve.top1), False
        for epoch, (top1, correct, loss) in enumerate(
            zip(curve.top1, curve.correct, curve.loss, strict=True), start=1
        ):
            for key, value in outcome_attrs(epoch, correct, loss).items():
                trial.set_user_attr(key, value)
            trial.report(top1, epoch)
            if epoch < len(curve.top1) and trial.should_prune():  # as the objective: not at the end
                end, pruned = epoch, True
                break
        if pruned or curve.diverged:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, curve.final)
        ends.append(end if pruned else -end)  # negative: completed
    return ends


def main(argv: list[str] | None = None) -> int:
    """Train the curves, replay the rules, print one line per rule; returns the exit status."""
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--trials", type=int, default=10, help="configurations trained to the end")
    p.add_argument("--epochs", type=int, default=12, help="full budget per trial")
    p.add_argument("--classes", type=int, default=12, help="synthetic classes")
    p.add_argument("--clips", type=int, default=30, help="clips per class")
    p.add_argument("--frames", type=int, default=40, help="frames per clip (most are cut)")
    p.add_argument("--dim", type=int, default=32, help="feature size")
    p.add_argument("--seed", type=int, default=0, help="data and sampler seed")
    p.add_argument("--startup", type=int, default=5, help="startup_trials of every rule")
    p.add_argument("--warmup", type=int, default=2, help="warmup_epochs of every rule")
    p.add_argument(
        "--patience", type=int, default=0, help="also replay with curves cut by this patience"
    )
    p.add_argument(
        "--min-loss-gain",
        type=float,
        nargs="+",
        default=[0.0],
        help="with --patience: the train.min_loss_gain values (nats) to cut the curves with",
    )
    p.add_argument(
        "--curves",
        type=Path,
        help="save the trained curves to this .npz, or replay the ones already saved there",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: more only oversubscribe a shared box)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    if args.curves is not None and args.curves.exists():
        curves, classes = load_curves(args.curves, args)
        print(f"# {len(curves)} trials x {args.epochs} epochs read from {args.curves}")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            curves, classes = train_curves(args, Path(tmp))
        took = time.perf_counter() - started
        print(f"# {len(curves)} trials x {args.epochs} epochs in {took:.0f}s")
        if args.curves is not None:
            save_curves(args.curves, curves, classes, args)
    base = {"startup_trials": args.startup, "warmup_epochs": args.warmup}
    rules = {
        "none": PrunerSpec(kind="none"),
        "median": PrunerSpec(kind="median", **base),
        "successive_halving": PrunerSpec(kind="successive_halving", **base),
        "hyperband": PrunerSpec(kind="hyperband", **base),
        **{
            f"paired top1 a={a:g}": PrunerSpec(kind="paired", metric="top1", alpha=a, **base)
            for a in (0.2, 0.1, 0.05, 0.01, 0.001)
        },
        **{
            f"paired loss a={a:g}": PrunerSpec(kind="paired", metric="loss", alpha=a, **base)
            for a in (0.05, 0.01, 0.001)
        },
        **{
            f"paired top1 a={a:g} slack {k:g}": PrunerSpec(
                kind="paired", metric="top1", alpha=a, slack=k, **base
            )
            for a, k in ((0.001, 1.5), (0.001, 2), (0.001, 3), (0.01, 2))
        },
    }
    # The paired rule before steps per epoch were recorded: it pairs trials at equal epochs.
    by_epochs = {"paired top1 a=0.001 epochs": PrunerSpec(kind="paired", alpha=0.001, **base)}
    cuts = [(0, 0.0)] + [(args.patience, g) for g in args.min_loss_gain if args.patience]
    for patience, gain in cuts:
        cut = [cut_by_patience(c, patience, gain) for c in curves]
        print_rules(cut, rules, by_epochs, classes, args.epochs, patience, gain)
        if patience:
            print_patience_cost(curves, cut)
        print_bound(cut, args.startup, max(1, args.warmup))
    return 0


def false_prunes(
    finals: list[float], ends: list[int], diverged: list[bool]
) -> tuple[int, int, float]:
    """Return the pruned trials (ends > 0) above the median of all finals, those above the
    median of the completed trials (the audit's bar), and that median.

    A diverged trial is neither: the study records it pruned, the rule never judged it.
    """
    pruned = [i for i, e in enumerate(ends) if e > 0]
    completed = [f for f, e, d in zip(finals, ends, diverged, strict=True) if e < 0 and not d]
    # A rule could in principle complete none (every trial diverged or pruned): no bar then.
    audit_bar = statistics.median(completed) if completed else float("nan")
    bar = statistics.median(finals)
    return (
        sum(finals[i] > bar for i in pruned),
        sum(finals[i] > audit_bar for i in pruned),
        audit_bar,
    )


def print_rules(
    curves: list[Curve],
    rules: dict[str, PrunerSpec],
    by_epochs: dict[str, PrunerSpec],
    classes: int,
    epochs: int,
    patience: int,
    min_loss_gain: float,
) -> None:
    """Replay every rule on curves (by_epochs without steps per epoch); print a line a rule."""
    finals = [c.final for c in curves]
    median_final, best = statistics.median(finals), max(range(len(curves)), key=finals.__getitem__)
    full = sum(len(c.top1) for c in curves)
    print(
        f"# patience {patience or 'off'}"
        + (f", min loss gain {min_loss_gain:g}" if patience else "")
        + f": {full} epochs without pruning; median final val top-1"
        f" {median_final:.3f}, best {finals[best]:.3f} (trial {best})"
    )
    print(
        f"{'rule':<32} {'pruned':>6} {'false':>5} {'false*':>12} {'best kept':>9} {'epochs':>7}"
        "  pruned at"
    )
    for name, spec in [*rules.items(), *by_epochs.items()]:
        pruner = make_pruner(spec, True, epochs)
        ends = replay(curves, pruner, classes, by_steps=name not in by_epochs)
        pruned = [i for i, e in enumerate(ends) if e > 0]
        false, audited, completed = false_prunes(finals, ends, [c.diverged for c in curves])
        spent = sum(abs(e) for e in ends) / full
        at = ",".join(f"{i}@{ends[i]}" for i in pruned)
        kept = "yes" if best not in pruned else "NO"
        star = f"{audited} of {completed:.2f}"
        print(f"{name:<32} {len(pruned):>6} {false:>5} {star:>12} {kept:>9} {spent:>7.0%}  {at}")


def print_patience_cost(full: list[Curve], cut: list[Curve]) -> None:
    """Print what the patience cut itself cost: trials whose best top-1 came after their stop."""
    lost = [(f.final - c.final, i) for i, (f, c) in enumerate(zip(full, cut, strict=True))]
    lost = sorted((gap, i) for gap, i in lost if gap > 0)
    worst = f", at most {lost[-1][0]:.3f} (trial {lost[-1][1]})" if lost else ""
    print(
        f"# patience stopped {len(lost)} of {len(full)} trials below their full curve's best"
        f"{worst}; {sum(len(c.top1) for c in cut)} of {sum(len(f.top1) for f in full)} epochs"
    )


def print_bound(curves: list[Curve], startup: int, warmup: int) -> None:
    """Print what an oracle would spend: the floor under every rule's epochs column."""
    for epoch in (warmup, warmup + 2):
        for rate in (0.0, 0.1):
            share, pruned, false = oracle_share(curves, startup, epoch, rate)
            allowed = f"false prunes under {rate:.0%} of the prunes" if rate else "no false prune"
            print(
                f"# bound at epoch {epoch}, {allowed}: an oracle"
                f" prunes {pruned} ({false} false) and spends {share:.0%} of the epochs"
            )


if __name__ == "__main__":
    sys.exit(main())
