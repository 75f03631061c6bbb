"""Per-trial cost of W&B tracking in offline mode: init + 50 step logs + 10 epoch logs + finish.

    python bench/tracking.py [--runs 5] [--steps 50] [--epochs 10]

Prints the mean and spread of the seconds one TrialRun adds to a trial, plus the same loop with
tracking disabled as the baseline; compare the mean to a demo trial's wall time (target < 5 %).
The first run (which also starts wandb's background service) is timed separately: every later
trial of a study pays only the steady-state cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from search.tracking import TrackingConfig, TrialRun


def one_trial(cfg: TrackingConfig, number: int, steps: int, epochs: int) -> float:
    """Return the seconds one tracked trial spends in tracking calls."""
    config = {
        "cell": "gru",
        "hidden": 256,
        "layers": 2,
        "lr": 1e-3,
        "dropout": 0.1,
        "batch_size": 64,
        "epochs_budget": epochs,
        "trial_number": number,
    }
    start = time.perf_counter()
    with TrialRun(cfg, number, config) as run:
        for step in range(steps):
            run.log_step(
                {
                    "train/loss": 4.0 / (step + 1),
                    "train/top1": step / steps,
                    "train/examples_per_s": 5000.0,
                    "epoch": 1 + step * epochs // steps,
                },
                step=step * 20,
            )
        for epoch in range(1, epochs + 1):
            run.log_epoch(
                epoch,
                {
                    "val/loss": 3.0 / epoch,
                    "val/top1": epoch / 20,
                    "val/top5": epoch / 10,
                    "train/epoch_loss": 3.5 / epoch,
                },
            )
        run.finish("complete", {"best_val_top1": epochs / 20, "best_epoch": epochs})
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5, help="timed trials (default 5)")
    p.add_argument("--steps", type=int, default=50, help="log_step calls per trial (default 50)")
    p.add_argument("--epochs", type=int, default=10, help="log_epoch calls per trial (default 10)")
    args = p.parse_args()
    os.environ.pop("WANDB_API_KEY", None)
    os.environ.setdefault("WANDB_SILENT", "true")
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        offline = TrackingConfig("offline", "bench-tracking", "bench", tmp)
        disabled = TrackingConfig("disabled", "bench-tracking", "bench", tmp)
        t0 = time.perf_counter()
        import wandb  # noqa: F401  (import cost is paid once per process, not per trial)

        import_s = time.perf_counter() - t0
        first_s = one_trial(offline, 0, args.steps, args.epochs)
        times = [one_trial(offline, n, args.steps, args.epochs) for n in range(1, args.runs + 1)]
        base = [one_trial(disabled, n, args.steps, args.epochs) for n in range(args.runs)]
    mean = statistics.mean(times)
    spread = statistics.stdev(times) if len(times) > 1 else 0.0
    print(f"wandb import (once per process): {import_s:.3f} s")
    print(f"first offline trial (starts wandb service): {first_s:.3f} s")
    print(
        f"offline tracking per trial ({args.steps} steps, {args.epochs} epochs, "
        f"{args.runs} runs): mean {mean:.3f} s, stdev {spread:.3f} s, "
        f"min {min(times):.3f} s, max {max(times):.3f} s"
    )
    print(f"disabled tracking per trial (baseline): mean {statistics.mean(base) * 1e6:.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
