"""Run (or resume) the UCF-101 RNN hyperparameter study; `report` writes its HTML report.

    python run_study.py --trials 50            # demo data when none is given
    python run_study.py report --study-name ucf101_rnn
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
import time
import warnings
from pathlib import Path

DEFAULT_STUDY = "studies/ucf101_rnn.yaml"


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
        "Subcommand: `run_study.py report [...]` writes the study's HTML report.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--trials", type=_non_negative_int, default=50,
                   help="trials the study holds in total, counted across every worker that "
                        "shares the storage (not per process)")
    p.add_argument("--timeout", type=_positive_float, default=None,
                   help="stop starting new trials after this many seconds")
    p.add_argument("--study", default=DEFAULT_STUDY,
                   help="study definition file: search space, epochs, pruner, sampler, data")
    p.add_argument("--study-name", default=None,
                   help="name of the study in the storage (default: the definition's name)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL: sqlite:///FILE, postgresql://USER@HOST/DB for many "
                        "workers, or journal:///FILE.log (default: sqlite:///studies/NAME.db)")
    p.add_argument("--data", default=None,
                   help="glob of TFRecord shards (default: the definition's data.pattern; the "
                        "embedded demo set when that matches nothing)")
    p.add_argument("--jobs", type=_positive_int, default=1,
                   help="trials run at once in this process (they share one copy of the data); "
                        "above 1 trades reproducibility for speed: which params are drawn "
                        "depends on timing, though each trial's recorded params and seed "
                        "rerun it alone with --jobs 1")
    p.add_argument("--device", default="auto",
                   help="cpu, cuda or cuda:N; auto takes the GPU when there is one")
    p.add_argument("--seed", type=int, default=None,
                   help="study seed for the sampler and every trial's seed "
                        "(default: the definition's sampler.seed)")
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help="epoch budget per trial (default: the definition's train.epochs)")
    p.add_argument("--wandb-mode", choices=("online", "offline", "disabled"), default=None,
                   help="W&B mode (default: online with an API key, else offline)")
    p.add_argument("--wandb-project", default=None,
                   help="W&B project (default: the definition's tracking.project)")
    p.add_argument("--wandb-report", action="store_true",
                   help="build a W&B Report for the study at the end (online mode only)")
    p.add_argument("--no-prune", action="store_true",
                   help="run every trial to its full epoch budget")
    p.add_argument("--out-dir", default=None,
                   help="where checkpoints, final scores and the report go "
                        "(default: studies/runs/NAME)")
    p.add_argument("--heartbeat", type=_positive_int, default=None,
                   help="seconds between a trial's heartbeats on a database storage (default "
                        "10); a trial silent for 3x this is failed and retried with the same "
                        "params; journal storages have none")
    p.add_argument("--max-failures", type=_non_negative_int, default=5,
                   help="stop with exit 1 after this many trials in a row fail in this "
                        "process (a bug, not bad luck); 0 never stops")
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
    p.add_argument("--storage", default=None, help="Optuna storage URL "
                   "(default: sqlite:///studies/NAME.db)")
    p.add_argument("--out", default=None, help="HTML file (default: studies/runs/NAME/report.html)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    from datasets.errors import DataError
    from search.errors import StudyError
    from search.tracking import TrackingError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # wandb prints three lines per run; the summary gives the one command that matters (sync).
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        if argv[:1] == ["report"]:
            return _report(build_report_parser().parse_args(argv[1:]))
        return _study(build_parser().parse_args(argv))
    except (DataError, StudyError, TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before any trial started: nothing to clean up
        print("interrupted before any trial started", file=sys.stderr)
        return 130


def _names(args: argparse.Namespace):
    from search.definition import load_definition
    from search.storage import default_storage_url

    definition = load_definition(args.study)
    name = args.study_name or definition.name
    return definition, name, args.storage or default_storage_url(name)


def _report(args: argparse.Namespace) -> int:
    import optuna

    from search.errors import StudyError
    from search.report import write_report
    from search.storage import open_storage

    _, name, url = _names(args)
    storage = open_storage(url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise StudyError(
            f"no study named {name!r} in {url}; check --study-name and --storage"
        ) from None
    out = write_report(study, args.out or Path("studies/runs") / name / "report.html")
    print(f"report: {out}")
    return 0


def _device(requested: str) -> str:
    import torch

    from search.errors import StudyError

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise StudyError(f"--device {requested}: no CUDA GPU is visible here; use --device cpu")
    if requested != "cpu" and not requested.startswith("cuda"):
        raise StudyError(f"--device {requested!r}: use cpu, cuda, cuda:N or auto")
    return requested


def _study(args: argparse.Namespace) -> int:
    import optuna
    import torch
    from tqdm import tqdm

    from search import console, tracking
    from search.best_checkpoint import BestCheckpoint
    from search.manifest import trial_seed
    from search.objective import TrialSettings, loaders, objective
    from search.runner import counted_trials, run_trials
    from search.storage import open_storage
    from search.study import make_sampler, open_study
    from search.study_data import load_study_data, resolve_pattern

    started = time.perf_counter()
    if args.verbose:
        logging.getLogger().setLevel(logging.INFO)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats, their retry callback and artifacts are "experimental" in Optuna 5 but pinned.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    definition, name, url = _names(args)
    device = _device(args.device)
    seed = definition.sampler.seed if args.seed is None else args.seed
    out_dir = Path(args.out_dir or Path("studies/runs") / name)

    # Everything that can be wrong with the input is found before the storage is touched.
    pattern, demo = resolve_pattern(definition.data, args.data)
    if demo:
        print(f"no data given and none in {definition.data.pattern}: using the embedded "
              f"synthetic demo set {pattern}")
    data = load_study_data(definition.data, pattern, demo)
    storage = open_storage(url, heartbeat_interval=args.heartbeat)
    study = open_study(name, storage, definition, seed=seed, prune=not args.no_prune,
                       feature_dim=data.features.feature_dim,
                       fingerprint=data.features.fingerprint)
    mode = tracking.resolve_mode(args.wandb_mode)
    track = tracking.TrackingConfig(mode=mode, project=args.wandb_project
                                    or definition.tracking.project, group=name, dir=str(out_dir),
                                    entity=definition.tracking.entity)
    settings = TrialSettings(definition=definition, data=data, device=device, seed=seed,
                             epochs=args.epochs or definition.train.epochs,
                             prune=not args.no_prune, tracking=track,
                             best=BestCheckpoint(out_dir / "best.pt"),
                             artifact_dir=out_dir / "artifacts")
    if device == "cpu" and args.jobs > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.jobs))
    # On a GPU the train and validation clips are copied to the device once, here, and every
    # trial's loaders find this copy (datasets.batches shares it while anyone holds it).
    resident = loaders({}, settings, seed, ("train", "val")) if device != "cpu" else []
    print(f"study {name!r} in {url}: {len(data.parts['train'])} train / "
          f"{len(data.parts['val'])} val / {len(data.parts['test'])} test clips, "
          f"{data.features.feature_dim}-d, device {device}, W&B {mode}")

    done = counted_trials(study.get_trials(deepcopy=False))
    bar = tqdm(total=max(args.trials, done), initial=min(done, args.trials), desc="trials",
               unit="trial", dynamic_ncols=True)
    lock = threading.Lock()

    def on_trial_end(trial: optuna.trial.FrozenTrial) -> None:
        with lock:
            bar.write(console.trial_line(trial))
            bar.update(1)
            with contextlib.suppress(ValueError):  # no complete trial yet
                bar.set_postfix(best=f"{study.best_value:.4f}")

    outcome = run_trials(study, lambda trial, stop: objective(trial, settings, stop),
                         storage_url=url, total=args.trials, jobs=args.jobs,
                         timeout=args.timeout, on_trial_end=on_trial_end,
                         sampler_for=lambda n: make_sampler(definition.sampler,
                                                            trial_seed(seed, n)),
                         max_failures=args.max_failures)
    bar.close()
    if outcome.reason == "failures":
        print(f"error: stopped after {args.max_failures} failed trials in a row; last: "
              f"{outcome.last_failure}", file=sys.stderr)
        return 1
    where = _finish(study, settings, out_dir, outcome.reason, args)
    del resident  # held until the final scoring is done
    print(console.summary(
        study, wall_s=time.perf_counter() - started, outcome=outcome.reason, storage_url=url,
        where=where, dashboard_cmd=_dashboard_command(url, out_dir),
        sync_cmd=tracking.sync_command(track)))
    return 130 if outcome.reason == "interrupted" else 0


def _finish(study, settings, out_dir: Path, outcome: str, args: argparse.Namespace) -> dict:
    """Score the best trial on the test groups, attach artifacts, log the study run, report."""
    import numpy as np
    from optuna.trial import TrialState

    from search import tracking
    from search.artifacts import attach_best_artifacts, render_confusion_png
    from search.final import score_baseline, score_best
    from search.report import write_report

    where: dict[str, str] = {}
    has_best = bool(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    confusion = None
    if has_best and outcome != "interrupted":
        final, scored_here = score_best(study, settings, out_dir)
        score_baseline(study, settings)
        confusion = np.asarray(final["test"]["confusion"])
        if scored_here:  # the test-split confusion matrix goes to the study (trials are done)
            png = render_confusion_png(confusion, final["class_names"],
                                       out_dir / "test-confusion.png")
            attach_best_artifacts(study, final["trial_number"], [png], settings.artifact_dir)
            where["best checkpoint"] = str(settings.best.path)
            where["final scores"] = str(out_dir / "final.json")
    run_path = tracking.log_study_run(settings.tracking, study, confusion,
                                      settings.data.class_names)
    if run_path:
        where["W&B study run"] = run_path
    if args.wandb_report:
        try:
            where["W&B report"] = tracking.build_report(settings.tracking, study.study_name,
                                                        settings.definition.searched())
        except tracking.TrackingError as exc:  # offline: says how to build it after syncing
            where["W&B report"] = str(exc)
    where["report"] = str(write_report(study, out_dir / "report.html"))
    return where


def _dashboard_command(url: str, out_dir: Path) -> str:
    from search.storage import journal_path

    journal = journal_path(url)  # the dashboard takes a journal file by its path
    return f"optuna-dashboard {journal or url} --artifact-dir {out_dir / 'artifacts'}"


if __name__ == "__main__":
    sys.exit(main())
