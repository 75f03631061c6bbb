"""Chaos soak: worker processes share one PostgreSQL study while some are killed and replaced.

    python bench/chaos.py [--workers 3] [--trials 10] [--faults 5] [--seed 0] [--storage URL]

N `run_study.py` processes (tiny synthetic data, tiny epochs, W&B offline into a temp dir,
heartbeat 1 s) share a fresh study; at seeded random moments one gets SIGKILL or SIGINT and a
replacement starts, as a cluster scheduler would. When every worker has exited it checks the
study and prints one line per check; it exits 1 when any check fails.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the offline W&B reader lives with the tests

from wandb_offline import offline_runs  # noqa: E402

from datasets.cache import load_features  # noqa: E402
from datasets.synthetic import write_synthetic  # noqa: E402
from models.checkpoint import load_checkpoint  # noqa: E402
from search.storage import MAX_RETRY  # noqa: E402

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
SPACE = {
    "cell": {"choices": ["lstm", "gru"]},
    "layers": {"low": 1, "high": 2},
    "hidden": {"low": 8, "high": 24, "log": True},
    "lr": {"low": 3e-3, "high": 3e-2, "log": True},
    "clip_norm": {"low": 0.5, "high": 5.0, "log": True},
    "batch_size": 32,
}
SEARCHED = {k for k, v in SPACE.items() if isinstance(v, dict)}


@dataclass
class Worker:
    proc: subprocess.Popen
    log: Path
    signalled: str | None = None  # 'SIGKILL' | 'SIGINT' once we sent one
    hung: bool = False


@dataclass
class Soak:
    name: str
    root: Path
    workers: list[Worker] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)


def prepare(root: Path, epochs: int) -> tuple[Path, str]:
    """Write tiny data, decode it once and write the study definition; return (yaml, glob)."""
    data = root / "data"
    write_synthetic(
        data, clips_per_class=25, frames=12, dim=8, classes=3, seed=3, shard_size=40, workers=1
    )
    pattern = str(data / "*.tfrecord*")
    load_features(pattern, cache_dir=root / "cache")  # before the workers race to decode it
    definition = {
        "name": "chaos",
        "data": {"split": 1, "val_groups": 4, "cache_dir": str(root / "cache")},
        "space": SPACE,
        "train": {"epochs": epochs},
        "pruner": {"kind": "median", "startup_trials": 2, "warmup_epochs": 1},
        "sampler": {"kind": "tpe", "startup_trials": 3, "seed": 7},
        "tracking": {"project": "chaos"},
    }
    path = root / "chaos.yaml"
    path.write_text(yaml.safe_dump(definition))
    return path, pattern


def start(soak: Soak, args: argparse.Namespace, definition: Path, pattern: str) -> Worker:
    """Start one more worker process on the shared study."""
    log = soak.root / f"worker-{len(soak.workers)}.log"
    cmd = [
        sys.executable,
        str(REPO / "run_study.py"),
        "--study",
        str(definition),
        "--study-name",
        soak.name,
        "--storage",
        args.storage,
        "--data",
        pattern,
        "--out-dir",
        str(soak.root / "runs"),
        "--device",
        "cpu",
        "--wandb-mode",
        "offline",
        "--heartbeat",
        "1",
        "--trials",
        str(args.trials),
    ]
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "WANDB_DIR": str(soak.root / "runs"),
        "OMP_NUM_THREADS": "1",
    }
    # SIG_DFL first: started from a background shell, a worker would inherit an ignored SIGINT.
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    worker = Worker(proc, log)
    soak.workers.append(worker)
    return worker


def inject(soak: Soak, args, definition: Path, pattern: str, rng: random.Random) -> None:
    """Kill or interrupt a random live worker at seeded moments; start a replacement each time."""
    for _ in range(args.faults):
        # A fault lands while trials train (not while workers still import torch), at a
        # seeded random delay after one is seen running.
        if not wait_running(soak, args):
            return
        time.sleep(rng.uniform(0.0, args.gap))
        alive = [w for w in soak.workers if w.proc.poll() is None and w.signalled is None]
        if not alive:
            return
        victim = rng.choice(alive)
        kind = rng.choice(("SIGKILL", "SIGINT"))
        victim.proc.send_signal(getattr(signal, kind))
        victim.signalled = kind
        soak.faults.append(f"{kind} worker-{soak.workers.index(victim)}")
        start(soak, args, definition, pattern)


def wait_running(soak: Soak, args, timeout: float = 300.0) -> bool:
    """Wait until the study has a RUNNING trial; False once the budget is met or no one runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            trials = optuna.load_study(study_name=soak.name, storage=args.storage).get_trials()
        except KeyError:  # no worker has created the study yet
            trials = []
        if any(t.state == TrialState.RUNNING for t in trials):
            return True
        if sum("failed_trial" not in t.system_attrs for t in trials) >= args.trials and not any(
            t.state == TrialState.WAITING for t in trials
        ):
            return False
        if all(w.proc.poll() is not None for w in soak.workers):
            return False
        time.sleep(0.2)
    return False


def wait_all(soak: Soak, timeout: float) -> None:
    """Wait for every worker; one still running at the deadline is killed and marked hung."""
    deadline = time.monotonic() + timeout
    for worker in soak.workers:
        try:
            worker.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.hung = True
            os.killpg(worker.proc.pid, signal.SIGKILL)
            worker.proc.wait()


def check(soak: Soak, args) -> tuple[list[tuple[str, bool, str]], int]:
    """Return (check, passed, detail) for every promise the study must keep, and trials lost
    (budget not run, or chains left unfinished)."""
    study = optuna.load_study(study_name=soak.name, storage=args.storage)
    trials = study.get_trials()
    by_number = {t.number: t for t in trials}
    chains: dict[int, list] = {}
    for t in trials:
        chains.setdefault(t.system_attrs.get("failed_trial", t.number), []).append(t)
    abandoned = [
        first
        for first, chain in chains.items()
        if len(chain) == MAX_RETRY + 1 and all(t.state == TrialState.FAIL for t in chain)
    ]
    results = []
    logical = len(chains)  # counted here, not by the code under test
    results.append(
        (
            "logical trials == budget",
            logical == args.trials,
            f"{logical} logical ({len(trials)} rows) for a budget of {args.trials}",
        )
    )
    retried = sum(1 for t in trials if "failed_trial" in t.system_attrs)
    failed = sum(1 for t in trials if t.state == TrialState.FAIL)
    unreported = [
        first
        for first in abandoned
        if "abandoned" not in (chains[first][-1].user_attrs.get("fail_reason") or "")
    ]
    results.append(
        (
            "abandoned chains reported",
            not unreported,
            f"{len(trials)} rows, {failed} FAIL, {retried} retries, {len(abandoned)} "
            f"abandoned after {MAX_RETRY + 1} attempts: {abandoned}; "
            f"not reported as abandoned: {unreported}",
        )
    )
    left = [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    results.append(("no trial left RUNNING or WAITING", not left, f"left: {left}"))
    unfinished = {t.system_attrs.get("failed_trial", t.number) for t in trials if t.number in left}
    lost = max(0, args.trials - logical) + len(unfinished)
    bad_retries = []
    for t in trials:
        if "failed_trial" in t.system_attrs:
            before = by_number[t.system_attrs["retry_history"][-1]]
            if any(t.params.get(k) != v for k, v in before.params.items()):
                bad_retries.append(t.number)
    results.append(
        ("retries carry the params they replace", not bad_retries, f"retries {bad_retries} differ")
    )
    partial = [
        t.number
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and set(t.params) != SEARCHED
    ]
    results.append(("finished trials have every param", not partial, f"partial: {partial}"))
    codes = [(i, w.proc.returncode, w.signalled) for i, w in enumerate(soak.workers)]
    wrong = [(i, c, s) for i, c, s in codes if s != "SIGKILL" and c not in (0, 130)]
    hung = [i for i, w in enumerate(soak.workers) if w.hung]
    results.append(
        (
            "every worker exited 0 or 130, none hung",
            not wrong and not hung,
            f"codes {[c for _, c, _ in codes]}; wrong {wrong}; hung {hung}",
        )
    )
    runs = {
        r.config.get("trial_number"): r
        for r in offline_runs(soak.root / "runs")
        if r.job_type == "trial" and r.exit_code is not None
    }
    unclosed = [
        t.number
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.number not in runs
    ]
    results.append(("finished trials' W&B runs closed", not unclosed, f"unclosed: {unclosed}"))
    best_ok, detail = True, "no complete trial"
    if any(t.state == TrialState.COMPLETE for t in trials):
        _, _, extra = load_checkpoint(soak.root / "runs" / "best.pt")
        best = study.best_trial
        best_ok = extra.get("trial_number") == best.number or extra.get("value") == best.value
        detail = (
            f"best.pt trial {extra.get('trial_number')} value {extra.get('value')}; "
            f"study best trial {best.number} value {best.value}"
        )
    results.append(("best.pt scores the study's best", best_ok, detail))
    return results, lost


def main(argv: list[str] | None = None) -> int:
    """Run one soak; print its faults, checks and wall time; return 1 when a check fails."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--faults", type=int, default=5)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gap", type=float, default=6.0, help="most seconds between two faults")
    p.add_argument("--timeout", type=float, default=600.0, help="after this, a worker is hung")
    p.add_argument("--storage", default=PG_URL)
    p.add_argument("--keep", default=None, help="keep logs and runs in this folder")
    args = p.parse_args(argv)
    started = time.perf_counter()
    root = Path(args.keep or tempfile.mkdtemp(prefix="chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    soak = Soak(f"chaos-{uuid.uuid4().hex[:10]}", root)
    definition, pattern = prepare(root, args.epochs)
    for _ in range(args.workers):
        start(soak, args, definition, pattern)
    try:
        inject(soak, args, definition, pattern, random.Random(args.seed))
        wait_all(soak, args.timeout)
        results, lost = check(soak, args)
    finally:
        for w in soak.workers:
            if w.proc.poll() is None:
                os.killpg(w.proc.pid, signal.SIGKILL)
        optuna.delete_study(study_name=soak.name, storage=args.storage)
    print(
        f"chaos soak seed {args.seed}: {args.workers} workers, budget {args.trials}, "
        f"{len(soak.faults)} faults ({', '.join(soak.faults) or 'none'}), "
        f"{len(soak.workers)} workers started, logs in {root}"
    )
    for name, ok, detail in results:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    print(f"trials lost: {lost}; wall {time.perf_counter() - started:.1f} s")
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
