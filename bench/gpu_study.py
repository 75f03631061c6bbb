"""A whole study at UCF-101 size on one GPU: decode time, training speed, GPU use, trials/hour.

    python bench/gpu_study.py                       # full size: 101 x 132 clips, 250 x 2048
    python bench/gpu_study.py --classes 5 --clips-per-class 25 --frames 20 --dim 16 \
        --trials 4 --epochs 2 --jobs-list 1 2 --device cpu     # about a minute on a CPU

Steps, each timed:

1. write a synthetic set the size of UCF-101 (datasets.synthetic.write_synthetic: TFRecord
   shards in the real format; 101 classes x 132 clips = 13,332 clips, UCF-101 has 13,320);
2. decode it once into a fresh feature cache (datasets.cache.load_features), as the first
   run of a study does; the shards were just written, so they are read from the page cache;
3. train the default configuration (GRU, 2 x 256, batch 256, Adam 1e-3, clip 1.0)
   with models.training.train on the decoded set's training part: examples/s, validation
   excluded, as a trial reports it;
4. for each --jobs-list value, a fresh study of --trials trials with median pruning, run by
   `run_study.py` itself as a subprocess (the study definition studies/ucf101_rnn.yaml with
   the data and cache pointed here, SQLite storage, W&B disabled), while a thread samples
   `nvidia-smi` every 0.5 s. Trials/hour count the study's finished trials over the span
   from the first trial's start to the last one's end (so interpreter start-up and the
   final test scoring after the last trial are left out; the process's wall time is
   printed beside it).

Every figure is printed beside its target (the targets are for an H100 at full size).
Everything is written under a temporary folder (or --workdir) and removed at the end;
full size needs about 40 GB of disk there (27 GB of shards, 10 GB of cache).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from datasets.batches import BatchLoader  # noqa: E402
from datasets.cache import FeatureSet, load_features  # noqa: E402
from datasets.splits import SplitSpec, split_parts  # noqa: E402
from datasets.synthetic import write_synthetic  # noqa: E402
from datasets.ucf101 import NUM_CLASSES  # noqa: E402
from models.rnn import ModelSpec, build_model  # noqa: E402
from models.training import TrainConfig, train  # noqa: E402

DEFAULT_STUDY = REPO / "studies" / "ucf101_rnn.yaml"
SAMPLE_EVERY_S = 0.5
# The default configuration (models.rnn.ModelSpec's, at the batch size GPUs are judged at).
CELL, LAYERS, HIDDEN, BATCH, LR, CLIP = "gru", 2, 256, 256, 1e-3, 1.0
# Targets for an H100 or H200 at full size.
TARGET_EXAMPLES_PER_S = 20_000
TARGET_SPEEDUP = 2.5
TARGET_STUDY_S = 15 * 60


def build_parser() -> argparse.ArgumentParser:
    """Return the benchmark's flags."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--classes",
        type=int,
        default=NUM_CLASSES,
        help="synthetic classes (the first K UCF-101 classes)",
    )
    p.add_argument(
        "--clips-per-class",
        type=int,
        default=132,
        help="synthetic clips per class, spread over the 25 groups",
    )
    p.add_argument(
        "--frames",
        type=int,
        default=250,
        help="frames per clip at most (clips are 30-100%% of it, 20%% full length)",
    )
    p.add_argument("--dim", type=int, default=2048, help="features per frame")
    p.add_argument("--trials", type=int, default=50, help="trials per study")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epoch budget per trial (default: the study definition's train.epochs)",
    )
    p.add_argument(
        "--jobs-list",
        type=int,
        nargs="+",
        default=[1, 4],
        help="one fresh study per value, run with run_study.py --jobs N",
    )
    p.add_argument(
        "--throughput-epochs",
        type=int,
        default=2,
        help="epochs of the default-configuration training run",
    )
    p.add_argument(
        "--device", default="auto", help="cpu, cuda or cuda:N; auto takes the GPU when there is one"
    )
    p.add_argument(
        "--study",
        default=str(DEFAULT_STUDY),
        help="study definition whose space, pruner and sampler the studies use "
        "(its data section is pointed at the synthetic set; pruner forced "
        "to median)",
    )
    p.add_argument("--seed", type=int, default=0, help="synthetic data and study seed")
    p.add_argument(
        "--write-workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes writing the synthetic shards",
    )
    p.add_argument(
        "--workdir",
        default=None,
        help="keep shards, cache, storages and logs here instead of a temp folder "
        "that is removed at the end",
    )
    p.add_argument("--json", default=None, help="also write every figure to this JSON file")
    return p


@dataclass(frozen=True)
class GpuUse:
    """nvidia-smi samples taken while something ran."""

    util: list[float]  # percent
    memory_mib: list[float]

    def line(self) -> str:
        """Return 'mean/max' utilisation and memory, or why there are none."""
        if not self.util:
            return "n/a (no nvidia-smi samples)"
        return (
            f"util mean {statistics.fmean(self.util):.0f}% max {max(self.util):.0f}%, "
            f"memory mean {statistics.fmean(self.memory_mib) / 1024:.1f} GiB "
            f"max {max(self.memory_mib) / 1024:.1f} GiB ({len(self.util)} samples)"
        )


class GpuSampler:
    """Samples one GPU's utilisation and memory with nvidia-smi on a thread, every 0.5 s."""

    def __init__(self, gpu_index: str) -> None:
        self.gpu_index = gpu_index
        self._util: list[float] = []
        self._memory: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def result(self) -> GpuUse:
        """Return the samples taken so far."""
        return GpuUse(util=list(self._util), memory_mib=list(self._memory))

    def _run(self) -> None:
        cmd = [
            "nvidia-smi",
            "-i",
            self.gpu_index,
            "--query-gpu=utilization.gpu,memory.used",
            "--format=csv,noheader,nounits",
        ]
        while not self._stop.is_set():
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout
                util, memory = (float(v) for v in out.strip().splitlines()[0].split(","))
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                pass  # a missed sample; the count printed beside the figures shows it
            else:
                self._util.append(util)
                self._memory.append(memory)
            self._stop.wait(SAMPLE_EVERY_S)


def nvidia_smi_index(device: str) -> str:
    """Return nvidia-smi's index of a CUDA device (CUDA_VISIBLE_DEVICES renumbers them)."""
    index = torch.device(device).index or 0
    visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return visible[index].strip() if index < len(visible) else str(index)


@dataclass(frozen=True)
class StudyRun:
    """One study's figures."""

    jobs: int
    wall_s: float  # the run_study.py process, start to exit
    span_s: float  # first trial start to last trial end
    states: dict[str, int]
    trial_examples_per_s: list[float]  # each complete trial's training examples/s
    gpu: GpuUse | None

    @property
    def finished(self) -> int:
        return sum(self.states.values())

    @property
    def trials_per_hour(self) -> float:
        return self.finished / self.span_s * 3600


def default_config_speed(
    data: FeatureSet, parts: dict[str, np.ndarray], device: str, epochs: int, seed: int
) -> list[float]:
    """Train the default configuration; return each epoch's training examples/s."""
    spec = ModelSpec(
        kind="rnn",
        input_dim=data.feature_dim,
        num_classes=NUM_CLASSES,
        cell=CELL,
        hidden=HIDDEN,
        layers=LAYERS,
    )
    torch.manual_seed(seed)
    model = build_model(spec)
    train_loader = BatchLoader(data, parts["train"], BATCH, shuffle=True, seed=seed, device=device)
    val_loader = BatchLoader(data, parts["val"], BATCH, device=device)
    config = TrainConfig(lr=LR, clip_norm=CLIP, epochs=epochs, seed=seed, device=device)
    result = train(model, train_loader, val_loader, config)
    return [e.examples_per_s for e in result.epochs]


def write_definition(source: Path, target: Path, pattern: str, cache_dir: Path) -> None:
    """Copy a study definition with its data pointed at the synthetic set and median pruning."""
    raw = yaml.safe_load(source.read_text())
    raw["data"] = {
        **(raw.get("data") or {}),
        "pattern": pattern,
        "cache_dir": str(cache_dir),
        "lists_dir": None,
    }
    raw["pruner"] = {**(raw.get("pruner") or {}), "kind": "median"}
    target.write_text(yaml.safe_dump(raw, sort_keys=False))


def run_study(
    jobs: int, args: argparse.Namespace, device: str, definition: Path, pattern: str, work: Path
) -> StudyRun:
    """Run one fresh study through run_study.py; return its figures."""
    name = f"bench-gpu-study-j{jobs}-{uuid.uuid4().hex[:6]}"
    storage = f"sqlite:///{work / name}.db"
    cmd = [
        sys.executable,
        str(REPO / "run_study.py"),
        "--study",
        str(definition),
        "--study-name",
        name,
        "--storage",
        storage,
        "--data",
        pattern,
        "--trials",
        str(args.trials),
        "--jobs",
        str(jobs),
        "--wandb-mode",
        "disabled",
        "--device",
        device,
        "--seed",
        str(args.seed),
        "--out-dir",
        str(work / name),
    ]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true"}
    log = work / f"{name}.log"
    with ExitStack() as stack:
        sampler = (
            stack.enter_context(GpuSampler(nvidia_smi_index(device)))
            if device.startswith("cuda")
            else None
        )
        start = time.perf_counter()
        with log.open("w") as out:
            code = subprocess.run(
                cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, check=False
            ).returncode
        wall = time.perf_counter() - start
    if code:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise SystemExit(
            f"run_study.py --jobs {jobs} exited with {code}; last lines of {log}:\n"
            f"{tail}\ncommand: {shlex.join(cmd)}"
        )
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    done = [t for t in trials if t.state.is_finished()]
    if not done:
        raise SystemExit(f"run_study.py --jobs {jobs} finished no trial; see {log}")
    span = (
        max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
    ).total_seconds()
    states = {
        s.name.lower(): sum(t.state == s for t in done)
        for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    }
    speeds = [
        float(t.user_attrs["examples_per_s"]) for t in done if "examples_per_s" in t.user_attrs
    ]
    return StudyRun(
        jobs=jobs,
        wall_s=wall,
        span_s=span,
        states=states,
        trial_examples_per_s=speeds,
        gpu=sampler.result() if sampler else None,
    )


def resolve_device(requested: str) -> str:
    """Return the device to use; exit with a message when CUDA is asked for but absent."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {requested}: no CUDA GPU is visible here; use --device cpu")
    return requested


def _mb(paths: list[Path]) -> float:
    return sum(p.stat().st_size for p in paths) / 1e6


def _meets(ok: bool) -> str:
    return "meets" if ok else "below"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures; return the exit code."""
    args = build_parser().parse_args(argv)
    for name in (
        "classes",
        "clips_per_class",
        "frames",
        "dim",
        "trials",
        "throughput_epochs",
        "write_workers",
    ):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.jobs_list) < 1:
        raise SystemExit("--jobs-list values must be at least 1")
    started = time.perf_counter()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    device = resolve_device(args.device)
    on_cuda = device.startswith("cuda")
    device_name = torch.cuda.get_device_name(device) if on_cuda else "cpu"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    clips = args.classes * args.clips_per_class

    print(f"# python {shlex.join(sys.argv)}")
    print(f"# device {device} ({device_name}), {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(
        f"# data: {clips} clips = {args.classes} classes x {args.clips_per_class}, up to "
        f"{args.frames} frames x {args.dim}-d; study: {args.trials} trials, median pruning, "
        f"epochs {args.epochs or 'from the definition'}, --jobs {args.jobs_list}"
    )

    with ExitStack() as stack:
        if args.workdir:
            work = Path(args.workdir).resolve()
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu-study-")))
        shards_dir, cache_dir = work / "shards", work / "cache"

        t0 = time.perf_counter()
        shards = write_synthetic(
            shards_dir,
            clips_per_class=args.clips_per_class,
            frames=args.frames,
            dim=args.dim,
            classes=args.classes,
            seed=args.seed,
            workers=args.write_workers,
        )
        write_s = time.perf_counter() - t0
        print(
            f"write synthetic shards:   {write_s:8.2f} s   ({len(shards)} shards, "
            f"{_mb(shards):.0f} MB; not part of any target)",
            flush=True,
        )

        pattern = str(shards_dir / "*.tfrecord")
        t0 = time.perf_counter()
        data = load_features(pattern, cache_dir=cache_dir)
        decode_s = time.perf_counter() - t0
        cache_mb = _mb([p for p in cache_dir.rglob("*") if p.is_file()])
        print(
            f"decode into the cache:    {decode_s:8.2f} s   ({len(data)} clips, "
            f"{int(data.offsets[-1])} frames, {cache_mb:.0f} MB fp16, "
            f"{clips / decode_s:.0f} clips/s)",
            flush=True,
        )

        definition = work / "study.yaml"
        write_definition(Path(args.study), definition, pattern, cache_dir)
        spec = yaml.safe_load(definition.read_text())["data"]
        parts = split_parts(
            data.filenames,
            SplitSpec(split=spec.get("split", 1), val_groups=spec.get("val_groups", 4)),
        )
        speeds = default_config_speed(data, parts, device, args.throughput_epochs, args.seed)
        del data
        if on_cuda:
            torch.cuda.empty_cache()  # leave the GPU's memory to the study processes
        per_epoch = ", ".join(f"{s:.0f}" for s in speeds)
        print(
            f"default config ({CELL.upper()} {LAYERS}x{HIDDEN}, batch {BATCH}): "
            f"{speeds[-1]:.0f} examples/s in the last epoch (epochs: {per_epoch}; "
            f"{len(parts['train'])} train clips)   target on an H100: >= "
            f"{TARGET_EXAMPLES_PER_S:,} -> {_meets(speeds[-1] >= TARGET_EXAMPLES_PER_S)}",
            flush=True,
        )

        runs: list[StudyRun] = []
        for jobs in args.jobs_list:
            run = run_study(jobs, args, device, definition, pattern, work)
            runs.append(run)
            states = ", ".join(f"{n} {k}" for k, n in run.states.items())
            trial_speed = (
                f"median {statistics.median(run.trial_examples_per_s):.0f} examples/s "
                f"over {len(run.trial_examples_per_s)} complete trials"
                if run.trial_examples_per_s
                else "no complete trial"
            )
            gpu = run.gpu.line() if run.gpu else "n/a (no GPU)"
            print(
                f"study --jobs {jobs}: {run.finished} trials ({states}) in {run.span_s:.1f} s "
                f"of trials, {run.wall_s:.1f} s process wall: {run.trials_per_hour:.0f} "
                f"trials/hour",
                flush=True,
            )
            print(f"  trials' training speed: {trial_speed}")
            print(f"  GPU: {gpu}")
            print(
                f"  decode + study: {decode_s + run.wall_s:.1f} s   target at full size: < "
                f"{TARGET_STUDY_S} s -> {_meets(decode_s + run.wall_s < TARGET_STUDY_S)}",
                flush=True,
            )

    base = runs[0]
    print(
        f"{'jobs':>4} {'trials':>6} {'trials s':>9} {'wall s':>8} {'trials/h':>9} "
        f"{'vs --jobs ' + str(base.jobs):>12}"
    )
    for run in runs:
        print(
            f"{run.jobs:>4} {run.finished:>6} {run.span_s:>9.1f} {run.wall_s:>8.1f} "
            f"{run.trials_per_hour:>9.0f} {run.trials_per_hour / base.trials_per_hour:>11.2f}x"
        )
    for run in runs[1:]:
        if base.jobs == 1 and run.jobs == 4:
            ratio = run.trials_per_hour / base.trials_per_hour
            print(
                f"--jobs 4 vs --jobs 1: {ratio:.2f}x   target: >= {TARGET_SPEEDUP}x -> "
                f"{_meets(ratio >= TARGET_SPEEDUP)}"
            )
    total_s = time.perf_counter() - started
    print(f"total wall time: {total_s:.1f} s")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "device": device,
                    "device_name": device_name,
                    "torch": torch.__version__,
                    "clips": clips,
                    "classes": args.classes,
                    "clips_per_class": args.clips_per_class,
                    "frames": args.frames,
                    "dim": args.dim,
                    "trials": args.trials,
                    "epochs": args.epochs,
                    "write_s": write_s,
                    "decode_s": decode_s,
                    "default_config_examples_per_s": speeds,
                    "studies": [
                        {
                            "jobs": r.jobs,
                            "trials": r.finished,
                            "states": r.states,
                            "span_s": r.span_s,
                            "wall_s": r.wall_s,
                            "trials_per_hour": r.trials_per_hour,
                            "trial_examples_per_s": r.trial_examples_per_s,
                            "gpu_util": r.gpu.util if r.gpu else None,
                            "gpu_memory_mib": r.gpu.memory_mib if r.gpu else None,
                        }
                        for r in runs
                    ],
                    "total_s": total_s,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
