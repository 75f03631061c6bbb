"""How steady is a refit's test score: the last epoch's weights against the mean of the last k.

    python bench/refit_stability.py --data-dir /tmp/sq-data [--configs hand trial10]
        [--seeds 0 1 2] [--average 1 2 3 5] [--device auto] [--work-dir DIR] [--quick]

On bench/search_quality.py's data set (generated into --data-dir unless it is there), each
configuration is refit as `run_study.py` refits the best trial (search.refit: train +
validation groups, a fixed epoch count, constant learning rate) once per seed. For each k in
--average the refit's own running mean (models.weight_average) of the last k epochs' weights
is kept, and the test groups are scored with each (k = 1: the last
epoch's own, what the refit used before averaging), all from the same training run. Printed
per configuration and k: test top-1 per seed, its mean, standard deviation and range. The
configurations are the hand-set run and a best trial the search-quality benchmark found
(BENCHMARKS.md). --quick: 4 classes, a tiny model, 2 seeds; a test of the script, not a result.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ siblings
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

import torch
from search_quality import (
    HAND,
    HAND_EPOCHS,
    QUICK_HAND,
    QUICK_HAND_EPOCHS,
    ensure_data,
    trial_settings,
)

from models.evaluate import evaluate
from models.training import EpochResult, train
from models.weight_average import EpochAverage
from search.refit import prepare_refit

# name: (params, refit epochs). trial10: the search's best of an earlier run, refit once to 0.9802.
CONFIGS = {
    "hand": (HAND, HAND_EPOCHS),
    "trial10": (
        {
            **HAND,
            "layers": 2,
            "hidden": 419,
            "lr": 2.6e-3,
            "clip_norm": 0.60,
            "dropout": 0.11,
            "batch_size": 16,
        },
        27,
    ),
    "trial13": (  # the best of the 2-worker run (2026-12-07): val 1.0, refit once to 0.9901
        {
            **HAND,
            "layers": 2,
            "hidden": 212,
            "lr": 5.44e-3,
            "clip_norm": 0.119,
            "dropout": 0.456,
            "stride": 1,
            "batch_size": 64,
        },
        15,
    ),
    "trial15": (  # the best of the 35-trial run with the patience margin (2026-12-07): val 1.0
        {
            **HAND,
            "layers": 1,
            "hidden": 390,
            "lr": 1.327e-3,
            "clip_norm": 1.596,
            "dropout": 0.371,
            "stride": 2,
            "batch_size": 16,
        },
        18,
    ),
}


def refit_scores(
    params: dict, epochs: int, seed: int, settings, averages: list[int]
) -> dict[int, float]:
    """Refit params once with seed; return test top-1 for the mean of each last-k weights."""
    run = prepare_refit(params, settings, seed, epochs)
    means = {k: EpochAverage(run.model, epochs, k) for k in averages}

    def average_each(result: EpochResult) -> None:
        for mean in means.values():
            mean(result)

    train(run.model, run.train_loader, None, run.config, on_epoch=average_each)
    scores = {}
    for k, mean in means.items():
        run.model.load_state_dict(mean.state_dict())
        scores[k] = float(evaluate(run.model, run.test_loader, device=settings.device).top1)
    return scores


def main(argv: list[str] | None = None) -> int:
    """Refit every configuration with every seed; print one line per configuration and k."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True, help="synthetic set (made if absent)")
    p.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["hand", "trial10"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--average", nargs="+", type=int, default=[1, 2, 3, 5])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--work-dir", type=Path, help="feature cache and scratch (default: a temp dir)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="tiny data and model: tests the script")
    args = p.parse_args(argv)
    if min(args.average) < 1:
        p.error("--average: every k must be at least 1")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        pattern = ensure_data(args.data_dir, args.quick)
        settings = trial_settings(pattern, args.quick, args.device, work, "refit")
        seeds = args.seeds[:2] if args.quick else args.seeds
        print(f"{'config':<8} {'k':>2} {'mean':>7} {'std':>6} {'min':>6} {'max':>6}  per seed")
        configs = {"quick": (QUICK_HAND, QUICK_HAND_EPOCHS)} if args.quick else CONFIGS
        for name in ["quick"] if args.quick else args.configs:
            params, epochs = configs[name]
            averages = sorted({min(k, epochs) for k in args.average})
            started = time.perf_counter()
            runs = [refit_scores(params, epochs, s, settings, averages) for s in seeds]
            took = time.perf_counter() - started
            print(f"# {name}: {epochs} epochs, {len(seeds)} seeds in {took:.0f}s, {params}")
            for k in averages:
                scores = [r[k] for r in runs]
                spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
                print(
                    f"{name:<8} {k:>2} {statistics.fmean(scores):>7.4f} {spread:>6.4f} "
                    f"{min(scores):>6.4f} {max(scores):>6.4f}  "
                    + " ".join(f"{s:.4f}" for s in scores)
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
