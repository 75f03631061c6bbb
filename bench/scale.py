"""Trials per hour for 1, 2 and 4 worker processes sharing one study on PostgreSQL.

    python bench/scale.py [--workers 1 2 4] [--trials 8] [--epochs 3] [--storage URL]

Each measurement is a fresh study of the same budget on the embedded demo data; the workers
are separate `run_study.py` processes, as on separate machines, with the CPU's threads split
between them. Prints wall time, trials/hour and the speed-up over one worker.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from datasets.device import cpu_threads_each  # noqa: E402
from search.demo_data import ensure_demo_data  # noqa: E402


def run_workers(n: int, args: argparse.Namespace, data: str, logs: Path) -> tuple[float, int]:
    """Run n workers on a new study; return (wall seconds, trials in the study)."""
    name = f"bench-scale-{n}-{uuid.uuid4().hex[:8]}"
    threads = cpu_threads_each(n)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "disabled"}
    cmd = [
        sys.executable,
        str(REPO / "run_study.py"),
        "--storage",
        args.storage,
        "--study-name",
        name,
        "--data",
        data,
        "--trials",
        str(args.trials),
        "--epochs",
        str(args.epochs),
        "--wandb-mode",
        "disabled",
        "--device",
        "cpu",
        "--out-dir",
        str(logs / name),
    ]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=(logs / f"{name}-{i}.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        for i in range(n)
    ]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - start
    if any(codes):
        raise SystemExit(f"a worker failed ({codes}); see {logs}")
    trials = len(optuna.load_study(study_name=name, storage=args.storage).trials)
    optuna.delete_study(study_name=name, storage=args.storage)
    return wall, trials


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--trials", type=int, default=8, help="study budget per measurement")
    p.add_argument("--epochs", type=int, default=3, help="epoch budget per trial")
    p.add_argument("--storage", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--logs", default="/tmp/bench-scale", help="worker logs")
    args = p.parse_args()
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    data = ensure_demo_data(REPO / "data" / "demo")
    print(f"# {' '.join(sys.argv)}")
    print(f"# {os.cpu_count()} CPUs, demo data {data}, {args.trials} trials x {args.epochs} epochs")
    print(f"{'workers':>7} {'wall s':>8} {'trials':>6} {'trials/h':>9} {'vs 1':>6}")
    base = None
    for n in args.workers:
        wall, trials = run_workers(n, args, data, logs)
        rate = trials / wall * 3600
        base = base or rate
        print(f"{n:>7} {wall:>8.1f} {trials:>6} {rate:>9.0f} {rate / base:>5.2f}x", flush=True)


if __name__ == "__main__":
    main()
