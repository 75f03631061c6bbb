"""Run (or resume) the UCF-101 RNN hyperparameter study, and what comes after it.

python run_study.py --trials 50                # demo data when none is given
python run_study.py report --study-name ucf101_rnn
python run_study.py audit --sample 10          # false-prune rate of the pruner
python run_study.py evaluate --splits 1 2 3    # the UCF-101 protocol: mean +- std over splits
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import sys
import threading
import time
import warnings
from pathlib import Path

# With no data, the default study runs on the embedded demo set with this definition beside it:
# a space and budget sized for 20 classes of short clips, so 50 trials take minutes on 2 cores.
DEMO_STUDY = "demo.yaml"
# The epoch budget a study's trials ran with, so audit and evaluate re-run them at the same one.
EPOCHS_ATTR = "epochs_budget"
DEFAULT_STUDY = "studies/ucf101_rnn.yaml"
HERE = Path(__file__).resolve().parent


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the flags of the study command."""
    p = argparse.ArgumentParser(
        prog="run_study.py",
        description="Search LSTM/GRU classifiers over UCF-101 CNN features with Optuna; "
        "re-running the same command resumes the same study. "
        "Subcommands: `run_study.py report` writes the study's HTML report, `run_study.py audit` "
        "re-runs a sample of pruned trials to measure the false-prune rate, `run_study.py "
        "evaluate --splits 1 2 3` scores the best configuration on the three official splits.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--trials",
        type=_non_negative_int,
        default=50,
        help="trials the study holds in total, counted across every worker that "
        "shares the storage (not per process)",
    )
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=None,
        help="stop starting new trials after this many seconds",
    )
    p.add_argument(
        "--study",
        default=DEFAULT_STUDY,
        help="study definition file: search space, epochs, pruner, sampler, data "
        "(the default is taken next to run_study.py when the working "
        "directory has no studies/ucf101_rnn.yaml)",
    )
    p.add_argument(
        "--study-name",
        default=None,
        help="name of the study in the storage (default: the definition's name)",
    )
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL: sqlite:///FILE, postgresql://USER@HOST/DB for many "
        "workers, or journal:///FILE.log (default: sqlite:///studies/NAME.db)",
    )
    p.add_argument(
        "--data",
        default=None,
        help="glob of TFRecord shards (default: the definition's data.pattern; the "
        "embedded demo set when that matches nothing)",
    )
    p.add_argument(
        "--jobs",
        type=_positive_int,
        default=1,
        help="trials run at once in this process (they share one copy of the data); "
        "above 1 trades reproducibility for speed: which params are drawn "
        "depends on timing, though each trial's recorded params and seed "
        "rerun it alone with --jobs 1",
    )
    p.add_argument(
        "--device", default="auto", help="cpu, cuda or cuda:N; auto takes the GPU when there is one"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="study seed for the sampler and every trial's seed "
        "(default: the definition's sampler.seed)",
    )
    p.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help="epoch budget per trial (default: the definition's train.max_epochs)",
    )
    p.add_argument(
        "--wandb-mode",
        choices=("online", "offline", "disabled"),
        default=None,
        help="W&B mode (default: online with an API key, else offline)",
    )
    p.add_argument(
        "--wandb-project",
        default=None,
        help="W&B project (default: the definition's tracking.project)",
    )
    p.add_argument(
        "--wandb-report",
        action="store_true",
        help="build a W&B Report for the study at the end (online mode only)",
    )
    p.add_argument(
        "--no-prune", action="store_true", help="run every trial to its full epoch budget"
    )
    p.add_argument(
        "--out-dir",
        default=None,
        help="where checkpoints, final scores and the report go "
        "(default: studies/runs/NAME; see --study for where studies/ is)",
    )
    p.add_argument(
        "--heartbeat",
        type=_positive_int,
        default=None,
        help="seconds between a trial's heartbeats on a database storage (default "
        "10); a trial silent for 3x this is failed and retried with the same "
        "params; journal storages have none",
    )
    p.add_argument(
        "--max-failures",
        type=_non_negative_int,
        default=5,
        help="stop with exit 1 after this many trials in a row fail in this "
        "process (a bug, not bad luck); 0 never stops",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    return p


def build_report_parser() -> argparse.ArgumentParser:
    """Return the flags of the report subcommand."""
    p = argparse.ArgumentParser(
        prog="run_study.py report",
        description="Write one self-contained HTML report of a study (also while it runs).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--study", default=DEFAULT_STUDY, help="study definition file (for the name)")
    p.add_argument("--study-name", default=None, help="study name (default: the definition's)")
    p.add_argument(
        "--storage", default=None, help="Optuna storage URL (default: sqlite:///studies/NAME.db)"
    )
    p.add_argument("--out", default=None, help="HTML file (default: studies/runs/NAME/report.html)")
    return p


def _add_study_flags(p: argparse.ArgumentParser) -> None:
    """Add the flags that find a finished study and its data (audit, evaluate)."""
    p.add_argument("--study", default=DEFAULT_STUDY, help="study definition file")
    p.add_argument("--study-name", default=None, help="study name (default: the definition's)")
    p.add_argument(
        "--storage", default=None, help="Optuna storage URL (default: sqlite:///studies/NAME.db)"
    )
    p.add_argument(
        "--data",
        default=None,
        help="glob of TFRecord shards the study ran on (default: the definition's "
        "data.pattern; the embedded demo set when that matches nothing)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda or cuda:N; auto takes the GPU")
    p.add_argument(
        "--out-dir", default=None, help="where the results go (default: studies/runs/NAME)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log more")


def build_audit_parser() -> argparse.ArgumentParser:
    """Return the flags of the audit subcommand."""
    p = argparse.ArgumentParser(
        prog="run_study.py audit",
        description="Re-run a seeded sample of the study's pruned trials (own params and seed) "
        "to their full budget without pruning, and report how many would have finished above "
        "the median / the best of the completed trials. The re-runs are not added to the study.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--sample",
        type=_positive_int,
        default=10,
        help="pruned trials to re-run (all of them when there are fewer)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sample")
    p.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help="epoch budget of a re-run (default: the one the study's trials ran with)",
    )
    p.add_argument(
        "--jobs",
        type=_positive_int,
        default=1,
        help="re-runs at once on the CPU, each in a process of its own with cores / N torch "
        "threads (each still retraces its trial's seeded curve)",
    )
    _add_study_flags(p)
    return p


def build_evaluate_parser() -> argparse.ArgumentParser:
    """Return the flags of the evaluate subcommand."""
    p = argparse.ArgumentParser(
        prog="run_study.py evaluate",
        description="The UCF-101 protocol: refit the study's best configuration on each "
        "official split's training groups for its best epoch count and score that split's "
        "test groups; prints top-1 per split (95% bootstrap interval) and mean +- std.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--splits",
        type=int,
        nargs="+",
        choices=(1, 2, 3),
        default=[1, 2, 3],
        help="official splits to score",
    )
    p.add_argument(
        "--draws",
        type=_positive_int,
        default=1000,
        help="bootstrap resamples of the test clips per split",
    )
    _add_study_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    from datasets.errors import UserError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # wandb prints three lines per run; the summary gives the one command that matters (sync).
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        if argv[:1] == ["report"]:
            return _report(build_report_parser().parse_args(argv[1:]))
        if argv[:1] in (["audit"], ["evaluate"]):
            return _audit_or_evaluate(argv[0], argv[1:])
        return _study(build_parser().parse_args(argv))
    except UserError as exc:  # StudyError, DataError, TrackingError, ...
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before any trial started: nothing to clean up
        print("interrupted before any trial started", file=sys.stderr)
        return 130


def _home() -> Path:
    """Return the folder default paths are relative to: the cwd when it has studies/, else ours.

    Run from elsewhere, `python path/to/run_study.py` then finds its definition and writes the
    study, its runs, the demo set and the cache where a run from the repository would.
    """
    return Path() if Path("studies").is_dir() else HERE


def _definition_and_storage(args: argparse.Namespace):
    """Return the study definition, the study's name and its storage URL."""
    from search.definition import load_definition
    from search.storage import default_storage_url

    home = _home()
    study_file = Path(args.study)
    if args.study == DEFAULT_STUDY and not study_file.is_file():
        study_file = HERE / DEFAULT_STUDY
    definition = load_definition(study_file)
    if args.study == DEFAULT_STUDY and not getattr(args, "data", None):
        demo_file = study_file.with_name(DEMO_STUDY)
        if demo_file.is_file() and _uses_demo_set(definition.data, home):
            study_file, definition = demo_file, load_definition(demo_file)
    if study_file.parent == HERE / "studies" and home == HERE:
        definition = _data_at(definition, HERE)
    name = args.study_name or definition.name
    return definition, name, args.storage or default_storage_url(name, home / "studies")


def _uses_demo_set(spec, home: Path) -> bool:
    """Whether a study would run on the embedded demo set: its default glob matches nothing."""
    import glob

    from search.study_data import DEFAULT_PATTERN

    defaults = (DEFAULT_PATTERN, str(home / DEFAULT_PATTERN))
    return spec.pattern in defaults and not glob.glob(str(home / spec.pattern))


def _data_at(definition, root: Path):
    """Return the definition with its relative data paths taken from root."""
    import dataclasses

    def at_root(path: str | None) -> str | None:
        return path if path is None or Path(path).is_absolute() else str(root / path)

    data = definition.data
    return dataclasses.replace(
        definition,
        data=dataclasses.replace(
            data,
            pattern=at_root(data.pattern),
            cache_dir=at_root(data.cache_dir),
            lists_dir=at_root(data.lists_dir),
        ),
    )


def _resolve_pattern(spec, override: str | None) -> tuple[str, bool]:
    """Return the shard glob and whether it is the demo set, which lives under _home()/data."""
    import glob

    from search.demo_data import ensure_demo_data
    from search.study_data import DEFAULT_PATTERN, resolve_pattern

    home = _home()
    if override or home == Path() or spec.pattern != str(home / DEFAULT_PATTERN):
        return resolve_pattern(spec, override)
    if glob.glob(spec.pattern):
        return spec.pattern, False
    return ensure_demo_data(home / "data" / "demo"), True


def _out_dir(args: argparse.Namespace, name: str) -> Path:
    """Return --out-dir, else studies/runs/NAME under _home()."""
    return Path(args.out_dir) if args.out_dir else _home() / "studies" / "runs" / name


def _report(args: argparse.Namespace) -> int:
    import optuna

    from search.errors import StudyError
    from search.report import write_report
    from search.storage import open_storage, redact_url

    _, name, url = _definition_and_storage(args)
    storage = open_storage(url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise StudyError(
            f"no study named {name!r} in {redact_url(url)}; check --study-name and --storage"
        ) from None
    out = write_report(study, args.out or _home() / "studies" / "runs" / name / "report.html")
    print(f"report: {out}")
    return 0


def _finished_study(args: argparse.Namespace):
    """Return the loaded study, the settings its trials ran with, and the output folder."""
    import optuna

    from datasets.device import resolve_device
    from search.best_checkpoint import BestCheckpoint
    from search.errors import StudyError
    from search.objective import TrialSettings
    from search.storage import open_storage, redact_url
    from search.study_data import load_study_data
    from search.tracking import TrackingConfig

    if args.verbose:
        logging.getLogger().setLevel(logging.INFO)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    definition, name, url = _definition_and_storage(args)
    device = resolve_device(args.device)
    out_dir = _out_dir(args, name)
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        raise StudyError(
            f"no study named {name!r} in {redact_url(url)}; check --study-name and --storage"
        ) from None
    pattern, demo = _resolve_pattern(definition.data, args.data)
    data = load_study_data(definition.data, pattern, demo)
    known = study.user_attrs.get("data_fingerprint")
    if known and known != data.features.fingerprint:
        raise StudyError(
            f"the data {pattern} is not the data study {name!r} ran on "
            "(fingerprints differ); pass the study's --data"
        )
    settings = TrialSettings(
        definition=definition,
        data=data,
        device=device,
        seed=int(study.user_attrs.get("seed", definition.sampler.seed)),
        epochs=getattr(args, "epochs", None)
        or study.user_attrs.get(EPOCHS_ATTR)
        or definition.train.max_epochs,
        tracking=TrackingConfig(
            mode="disabled", project=definition.tracking.project, group=name, dir=str(out_dir)
        ),
        checkpoint=BestCheckpoint(out_dir / "best.pt"),
        artifact_dir=out_dir / "artifacts",
    )
    return study, settings, out_dir


def _audit_or_evaluate(command: str, argv: list[str]) -> int:
    """Run the audit or evaluate subcommand; store its record on the study and in out_dir."""
    import json

    from search.errors import StudyError

    parser = build_audit_parser() if command == "audit" else build_evaluate_parser()
    args = parser.parse_args(argv)
    started = time.perf_counter()
    study, settings, out_dir = _finished_study(args)
    out_dir.mkdir(parents=True, exist_ok=True)
    if command == "audit":
        from search.audit import audit_study

        record = audit_study(study, settings, args.sample, seed=args.seed, jobs=args.jobs)
        study.set_user_attr("audit", record)
        (out_dir / "audit.json").write_text(json.dumps(record, indent=1))
        print(_audit_text(record, out_dir / "audit.json"))
        _update_study_run(study, settings)
        return 0

    from search.final import best_epochs, best_params
    from search.protocol import evaluate_splits

    try:
        best = study.best_trial
    except ValueError:
        raise StudyError(
            f"study {study.study_name!r} has no completed trial to evaluate; run the search first"
        ) from None
    seed = int(best.user_attrs.get("manifest", {}).get("seed", 0))
    record = evaluate_splits(
        best_params(study, settings),
        settings,
        seed,
        best_epochs(best, settings),
        args.splits,
        draws=args.draws,
    )
    record["trial_number"] = best.number
    study.set_user_attr("protocol", record)
    path = out_dir / "final.json"
    final = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**final, "protocol": record}, indent=1))
    lines = [f"trial #{best.number} refit for {record['epochs']} epochs on each split:"]
    for s in record["splits"]:
        low, high = s["interval95"]
        lines.append(
            f"  split {s['split']}: test top-1 {s['top1']:.4f} "
            f"(95% bootstrap {low:.4f}-{high:.4f}, {s['test_clips']} clips)"
        )
    lines.append(
        f"  mean over {len(record['splits'])} splits: {record['mean_top1']:.4f} "
        f"+- {record['std_top1']:.4f} (std)"
    )
    lines.append(
        f"written to {path} (key protocol) and the study's user attr 'protocol' "
        f"in {time.perf_counter() - started:.0f} s"
    )
    print("\n".join(lines))
    _update_study_run(study, settings)
    return 0


def _update_study_run(study, settings) -> None:
    """Write a new audit or protocol record into the study's W&B study run, if it has one."""
    import dataclasses

    import numpy as np

    from search import tracking

    if tracking.STUDY_RUN_ATTR not in study.user_attrs:  # never tracked: start nothing now
        return
    # The subcommands track nothing of their own; the study run is updated in the W&B mode
    # WANDB_MODE or a login gives (as the study command's default).
    cfg = dataclasses.replace(settings.tracking, mode=tracking.resolve_mode(None))
    final = study.user_attrs.get("final") or {}
    confusion = final.get("test", {}).get("confusion")
    path = tracking.log_study_run(
        cfg, study, None if confusion is None else np.asarray(confusion), settings.data.class_names
    )
    if path:
        print(f"W&B study run updated: {path}")


def _audit_text(record: dict, path: Path) -> str:
    """Return the audit's table and verdict as printed lines."""
    lines = [
        f"audit of {record['audited']} of {record['pruned']} pruned trials against "
        f"{record['complete']} completed (median {record['median']:.4f}, "
        f"best {record['best']:.4f}):",
        "  trial  pruned@  value then  final value  epochs  >median  >best",
    ]
    for r in record["reruns"]:
        then, final = r["value_when_pruned"], r["final_value"]
        lines.append(
            f"  {r['trial_number']:>5}  {r['pruned_epoch'] if r['pruned_epoch'] else '?':>7}  "
            f"{'?' if then is None else f'{then:.4f}':>10}  "
            f"{'diverged' if final is None else f'{final:.4f}':>11}  {r['epochs']:>6}  "
            f"{'yes' if r['beat_median'] else 'no':>7}  {'yes' if r['beat_best'] else 'no':>5}"
        )
    if record["audited"]:
        low, high = record["interval95"]
        lines.append(
            f"false-prune rate {record['false_prune_rate']:.3f} "
            f"({record['beat_median']}/{record['audited']} beat the median; 95% Wilson "
            f"interval {low:.3f}-{high:.3f}); {record['beat_best']} beat the best"
        )
    else:
        lines.append("no pruned trial to audit")
    lines.append(f"{record['wall_s']:.0f} s; written to {path} and the study's user attr 'audit'")
    return "\n".join(lines)


def _study(args: argparse.Namespace) -> int:
    """Run the search; the device copy of the data it holds lives until its wrap-up is done."""
    with contextlib.ExitStack() as held:
        return _search(args, held)


def _search(args: argparse.Namespace, held: contextlib.ExitStack) -> int:
    import optuna
    import torch
    from tqdm import tqdm

    from datasets.device import cpu_threads_each, resolve_device
    from datasets.loading import resident_clips
    from search import console, tracking
    from search.best_checkpoint import BestCheckpoint
    from search.manifest import trial_seed
    from search.objective import TrialSettings, objective
    from search.runner import counted_trials, run_trials
    from search.storage import open_storage, redact_url
    from search.study import make_sampler, open_study
    from search.study_data import load_study_data

    started = time.perf_counter()
    if args.verbose:
        logging.getLogger().setLevel(logging.INFO)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats, their retry callback and artifacts are "experimental" in Optuna 5 but pinned.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    definition, name, url = _definition_and_storage(args)
    device = resolve_device(args.device)
    seed = definition.sampler.seed if args.seed is None else args.seed
    out_dir = _out_dir(args, name)

    # Everything that can be wrong with the input is found before the storage is touched.
    pattern, demo = _resolve_pattern(definition.data, args.data)
    epochs = args.epochs or definition.train.max_epochs
    if demo:
        print(
            f"no data given and none in {definition.data.pattern}: using the embedded "
            f"synthetic demo set {pattern} (study {definition.name!r}, sized for it: "
            f"studies/{DEMO_STUDY})"
        )
    data = load_study_data(definition.data, pattern, demo)
    storage = open_storage(url, heartbeat_interval=args.heartbeat)
    study = open_study(
        name,
        storage,
        definition,
        seed=seed,
        prune=not args.no_prune,
        feature_dim=data.features.feature_dim,
        fingerprint=data.features.fingerprint,
        max_epochs=epochs,
    )
    study.set_user_attr(EPOCHS_ATTR, epochs)
    mode = tracking.resolve_mode(args.wandb_mode)
    track = tracking.TrackingConfig(
        mode=mode,
        project=args.wandb_project or definition.tracking.project,
        group=name,
        dir=str(out_dir),
        entity=definition.tracking.entity,
    )
    settings = TrialSettings(
        definition=definition,
        data=data,
        device=device,
        seed=seed,
        epochs=epochs,
        tracking=track,
        checkpoint=BestCheckpoint(out_dir / "best.pt"),
        artifact_dir=out_dir / "artifacts",
    )
    if device == "cpu" and args.jobs > 1:
        torch.set_num_threads(cpu_threads_each(args.jobs))
    # On a GPU the train and validation clips are copied to the device once, here, and every
    # trial's loaders share this copy; it is held until the final scoring is done.
    held.enter_context(resident_clips(data, ("train", "val"), device))
    print(
        f"study {name!r} in {redact_url(url)}: {len(data.parts['train'])} train / "
        f"{len(data.parts['val'])} val / {len(data.parts['test'])} test clips, "
        f"{data.features.feature_dim}-d, device {device}, W&B {mode}"
    )

    done = counted_trials(study.get_trials(deepcopy=False))
    bar = tqdm(
        total=max(args.trials, done),
        initial=min(done, args.trials),
        desc="trials",
        unit="trial",
        dynamic_ncols=True,
    )
    lock = threading.Lock()

    def on_trial_end(trial: optuna.trial.FrozenTrial) -> None:
        with lock:
            bar.write(console.trial_line(trial))
            bar.update(1)
            with contextlib.suppress(ValueError):  # no complete trial yet
                bar.set_postfix(best=f"{study.best_value:.4f}")

    outcome = run_trials(
        study,
        lambda trial, stop: objective(trial, settings, stop),
        storage_url=url,
        total=args.trials,
        jobs=args.jobs,
        timeout=args.timeout,
        on_trial_end=on_trial_end,
        sampler_for=lambda n: make_sampler(definition.sampler, trial_seed(seed, n)),
        max_failures=args.max_failures,
    )
    bar.close()
    if outcome.reason == "failures":
        print(
            f"error: stopped after {args.max_failures} failed trials in a row; last: "
            f"{outcome.last_failure}",
            file=sys.stderr,
        )
        return 1
    try:
        where, scored_here = _finish(study, settings, out_dir, outcome.reason, args, url)
    except KeyboardInterrupt:
        print(
            "interrupted while scoring the best trial on the test groups; run the same "
            "command again to score it",
            file=sys.stderr,
        )
        return 130
    print(
        console.summary(
            study,
            wall_s=time.perf_counter() - started,
            outcome=outcome.reason,
            storage_url=url,
            where=where,
            dashboard_cmd=_dashboard_command(url, out_dir),
            sync_cmd=tracking.sync_command(track),
            final_is_new=scored_here,
        )
    )
    return 130 if outcome.reason == "interrupted" else 0


# Study user attr: how many trials the study held when its last worker wrapped it up.
WRAPPED_UP_ATTR = "wrapped_up_at_trials"


def _finish(
    study, settings, out_dir: Path, outcome: str, args: argparse.Namespace, url: str
) -> tuple[dict[str, str], bool]:
    """Wrap the study up if this worker is the last to finish; write the HTML report.

    Returns where things are and whether this run scored the test groups. The decision and
    the wrap-up hold the storage's budget lock, so of workers ending together exactly one
    scores the test groups and writes the W&B study run; a lock dies with its process, so a
    worker killed mid-way leaves the wrap-up to the next run of the same command.
    """
    from optuna.trial import TrialState

    from search.report import write_report
    from search.runner import counted_trials
    from search.storage import budget_lock

    where: dict[str, str] = {}
    scored_here = False
    if outcome == "interrupted":  # the study is not done: a later run wraps it up
        where["test scores and W&B study run"] = "not written (interrupted)"
    else:
        with budget_lock(url, study.study_name):
            trials = study.get_trials(deepcopy=False)
            busy = any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
            # A --timeout ends this worker's part too; the budget need not be met then.
            done = counted_trials(trials) >= args.trials or outcome == "timeout"
            if busy or not done:
                where["test scores and W&B study run"] = "left to the last worker to finish"
            elif study.user_attrs.get(WRAPPED_UP_ATTR) != len(trials) or _unscored(study):
                where, scored_here = _wrap_up(study, settings, out_dir)
                study.set_user_attr(WRAPPED_UP_ATTR, len(trials))
    if args.wandb_report:
        from search import tracking

        try:
            where["W&B report"] = tracking.build_report(
                settings.tracking, study.study_name, settings.definition.searched()
            )
        except tracking.TrackingError as exc:  # offline: says how to build it after syncing
            where["W&B report"] = str(exc)
    where["report"] = str(write_report(study, out_dir / "report.html"))
    return where, scored_here


def _unscored(study) -> bool:
    """Whether the best trial lacks test scores (removed, or scored before the refit existed)."""
    try:
        best = study.best_trial
    except ValueError:  # no complete trial: nothing to score
        return False
    final = study.user_attrs.get("final") or {}
    return final.get("trial_number") != best.number or "refit" not in final


def _wrap_up(study, settings, out_dir: Path) -> tuple[dict[str, str], bool]:
    """Score the best trial on the test groups (once per best), the baseline, the study run."""
    import numpy as np
    from optuna.trial import TrialState

    from search import tracking
    from search.artifacts import attach_best_artifacts, render_confusion_png
    from search.final import score_baseline, score_best

    where: dict[str, str] = {}
    scored_here, confusion = False, None
    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        final, scored_here = score_best(study, settings, out_dir)
        score_baseline(study, settings)
        confusion = np.asarray(final["test"]["confusion"])
        if scored_here:  # the test-split confusion matrix goes to the study (trials are done)
            png = render_confusion_png(
                confusion, final["class_names"], out_dir / "test-confusion.png"
            )
            attach_best_artifacts(study, final["trial_number"], [png], settings.artifact_dir)
        where["best checkpoint"] = str(settings.checkpoint.path)
        where["final scores"] = str(out_dir / "final.json")
    run_path = tracking.log_study_run(
        settings.tracking, study, confusion, settings.data.class_names
    )
    if run_path:
        where["W&B study run"] = run_path
    return where, scored_here


def _dashboard_command(url: str, out_dir: Path) -> str:
    """Return the optuna-dashboard command for this storage, never with its password.

    The password is left out rather than shown as ***: libpq reads PGPASSWORD (or ~/.pgpass)
    when the URL has none, so the printed command works as it stands once that is set.
    """
    import sqlalchemy

    from search.storage import journal_path

    artifacts = f"--artifact-dir {shlex.quote(str(out_dir / 'artifacts'))}"
    journal = journal_path(url)  # the dashboard takes a journal file by its path
    if journal is not None:
        return f"optuna-dashboard {shlex.quote(str(journal))} {artifacts}"
    parsed = sqlalchemy.engine.make_url(url)  # open_storage has read it already
    shown, note = url, ""
    if parsed.password or parsed.query.get("password"):
        parsed = parsed.difference_update_query(["password"])
        # URL is a named tuple; its .set() keeps the password when given None.
        shown = parsed._replace(password=None).render_as_string(hide_password=False)
        note = (
            "  (password left out: set PGPASSWORD first)"
            if shown.startswith("postgres")
            else "  (password left out: put it back into the URL)"
        )
    return f"optuna-dashboard {shlex.quote(shown)} {artifacts}{note}"


if __name__ == "__main__":
    sys.exit(main())
