"""Benchmark: raw read vs decoding (tfrecord package, datasets.records) vs reading the fp16 cache.

    python bench/loader.py                      # ~1000 clips x 250 frames x 2048 (about 2 GB)
    python bench/loader.py --clips 200 --dim 512 --cold

Writes synthetic shards to a temp folder, then runs every measurement in its own subprocess so
each reports its own peak memory: peak RSS (ru_maxrss, includes file pages mapped by a memmap),
peak private memory (RssAnon, sampled every 5 ms) and the RSS right after imports. Prints one
table, the ratios the design asks for, and whether the files were in the OS page cache.
"""

from __future__ import annotations

import argparse
import json
import math
import mmap
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# Run as a script from anywhere: make the project importable.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHUNK = 8 << 20


# ---------------------------------------------------------------- memory and page cache


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class PeakMemory:
    """Samples this process's private (anonymous) RSS on a thread; ru_maxrss gives total RSS."""

    def __init__(self) -> None:
        self.baseline_kb = _status_kb("VmRSS")
        self.baseline_anon_kb = self.peak_anon_kb = _status_kb("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_anon_kb = max(self.peak_anon_kb, _status_kb("RssAnon"))

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self.peak_anon_kb = max(self.peak_anon_kb, _status_kb("RssAnon"))
        return {
            "baseline_mb": self.baseline_kb / 1024,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_anon_mb": self.peak_anon_kb / 1024,
            "baseline_anon_mb": self.baseline_anon_kb / 1024,
        }


def resident_fraction(paths: list[str]) -> float:
    """Return the share of the files' pages in the OS page cache (mincore), without reading them."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    page = os.sysconf("SC_PAGE_SIZE")
    total = resident = 0
    for path in paths:
        size = os.path.getsize(path)
        if size == 0:
            continue
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)  # writable view, no reads
            try:
                anchor = ctypes.c_char.from_buffer(mm)
                pages = (size + page - 1) // page
                vec = (ctypes.c_ubyte * pages)()
                if (
                    libc.mincore(
                        ctypes.c_void_p(ctypes.addressof(anchor)), ctypes.c_size_t(size), vec
                    )
                    != 0
                ):
                    return float("nan")
                resident += sum(b & 1 for b in vec)
                total += pages
                del anchor
            finally:
                mm.close()
    return resident / total if total else float("nan")


def drop_from_page_cache(paths: list[str]) -> None:
    """Ask the kernel to drop the files' clean pages (no root needed; best effort)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# ------------------------------------------------------------------------ measurements
# Each returns {"clips", "bytes"} it processed and may time itself ("seconds") to leave out a
# warm-up; the child process adds the time and memory figures.


def measure_raw(cfg: dict) -> dict:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    for path in cfg["shards"]:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return {"clips": cfg["clips"], "bytes": total}


def measure_tfrecord(cfg: dict) -> dict:
    import numpy as np
    from tfrecord.reader import tfrecord_loader

    limit = cfg["tfrecord_clips"]
    count = 0
    for path in cfg["shards"]:
        loader = tfrecord_loader(
            path,
            None,
            ["sequence_length", "filename", "text", "fps"],
            sequence_description={"features": "float", "labels": "int"},
        )
        for context, lists in loader:
            n = int(context["sequence_length"][0])
            features = np.stack(lists["features"][:n])  # (n, dim) float32, like records.Clip
            assert features.shape[0] == n
            count += 1
            if count >= limit:
                break
        if count >= limit:
            break
    # Bytes pro rata: the package does not say where a record ends.
    return {"clips": count, "bytes": round(cfg["tfrecord_bytes"] * count / cfg["clips"])}


def measure_records(cfg: dict) -> dict:
    from datasets import records

    count = sum(1 for _ in records.read_clips(cfg["shards"]))
    return {"clips": count, "bytes": cfg["tfrecord_bytes"]}


def measure_cache_build(cfg: dict) -> dict:
    from datasets.cache import load_features

    shutil.rmtree(cfg["cache_dir"], ignore_errors=True)
    data = load_features(cfg["pattern"], cfg["cache_dir"])
    return {"clips": len(data), "bytes": cfg["tfrecord_bytes"]}


def measure_memmap(cfg: dict) -> dict:
    import numpy as np

    from datasets.cache import load_features

    data = load_features(cfg["pattern"], cfg["cache_dir"])
    rows = max(1, CHUNK // (2 * data.feature_dim))
    out = np.empty((rows, data.feature_dim), dtype=np.float16)
    for a in range(0, len(data.frames), rows):
        chunk = data.frames[a : a + rows]
        np.copyto(out[: len(chunk)], chunk)
    return {"clips": len(data), "bytes": data.frames.nbytes}


def _epoch(cfg: dict, epochs: int) -> dict:
    import numpy as np
    import torch

    from datasets.batches import BatchLoader
    from datasets.cache import load_features

    data = load_features(cfg["pattern"], cfg["cache_dir"])
    loader = BatchLoader(
        data,
        np.arange(len(data)),
        cfg["batch_size"],
        shuffle=True,
        seed=0,
        bucket=True,
        prefetch=True,
    )
    for epoch in range(epochs):  # the last one is timed
        start = time.perf_counter()
        count = 0
        for batch in loader.epoch(epoch):
            assert batch.features.dtype == torch.float32
            count += len(batch.lengths)
    return {"clips": count, "bytes": data.frames.nbytes, "seconds": time.perf_counter() - start}


def measure_epoch_first(cfg: dict) -> dict:
    return _epoch(cfg, 1)


def measure_epoch_next(cfg: dict) -> dict:
    return _epoch(cfg, 2)


# name -> (function, label, bytes counted, files it reads, page cache state before it runs)
MEASUREMENTS = {
    "raw": (measure_raw, "raw file read (8 MB chunks)", "TFRecord", "shards", "warm"),
    "raw_cold": (measure_raw, "raw file read (8 MB chunks)", "TFRecord", "shards", "cold"),
    "tfrecord": (measure_tfrecord, "decode: tfrecord package", "TFRecord", "shards", "warm"),
    "records": (measure_records, "decode: records.read_clips", "TFRecord", "shards", "warm"),
    "records_cold": (measure_records, "decode: records.read_clips", "TFRecord", "shards", "cold"),
    "cache_build": (
        measure_cache_build,
        "decode + write cache (1st load_features)",
        "TFRecord",
        "shards",
        "warm",
    ),
    "memmap": (
        measure_memmap,
        "cache: plain memmap sequential read",
        "fp16 cache",
        "cache",
        "warm",
    ),
    "epoch_first": (
        measure_epoch_first,
        "cache: BatchLoader 1st epoch of a process",
        "fp16 cache",
        "cache",
        "warm",
    ),
    "epoch_next": (
        measure_epoch_next,
        "cache: BatchLoader later epoch",
        "fp16 cache",
        "cache",
        "warm",
    ),
    "epoch_cold": (
        measure_epoch_first,
        "cache: BatchLoader 1st epoch of a process",
        "fp16 cache",
        "cache",
        "cold",
    ),
}

# Imported before the clock and the memory baseline start: import cost is not loader cost.
IMPORTS = {
    measure_raw: [],
    measure_tfrecord: ["numpy", "tfrecord.reader"],
    measure_records: ["datasets.records"],
    measure_cache_build: ["torch", "datasets.cache"],
    measure_memmap: ["numpy", "datasets.cache"],
    measure_epoch_first: ["torch", "datasets.batches", "datasets.cache"],
    measure_epoch_next: ["torch", "datasets.batches", "datasets.cache"],
}


def child(name: str, cfg: dict) -> None:
    """Run one measurement in this (child) process and print its result as JSON."""
    import importlib

    func = MEASUREMENTS[name][0]
    for module in IMPORTS[func]:
        importlib.import_module(module)
    mem = PeakMemory()
    start = time.perf_counter()
    result = func(cfg)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, **result, **mem.stop()}))


# ------------------------------------------------------------------------------ parent


def run_child(name: str, cfg: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", name, "--config", json.dumps(cfg)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"measurement {name!r} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def prepare_files(files: list[str], state: str) -> float:
    """Bring files into the page cache (warm) or drop them (cold); return the resident share."""
    if state == "cold":
        drop_from_page_cache(files)
    else:
        measure_raw({"shards": files, "clips": 0})
    return resident_fraction(files)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--clips",
        type=int,
        default=1000,
        help="clips to generate, rounded up to a multiple of 101 (default 1000)",
    )
    parser.add_argument("--frames", type=int, default=250, help="frames per record (default 250)")
    parser.add_argument("--dim", type=int, default=2048, help="feature size (default 2048)")
    parser.add_argument("--batch-size", type=int, default=64, help="BatchLoader batch (default 64)")
    parser.add_argument(
        "--tfrecord-clips",
        type=int,
        default=200,
        help="clips the (slow) tfrecord package decodes; its rate is measured "
        "on these (default 200)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of each measurement; the table shows the fastest (default 3)",
    )
    parser.add_argument("--data", help="glob of existing shards to use instead of generating")
    parser.add_argument(
        "--workdir", help="folder for shards and cache (default: a temp folder, removed afterwards)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, json.loads(args.config))
        return 0

    from datasets.records import find_shards
    from datasets.synthetic import write_synthetic

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-loader-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.data:
            shards, pattern, clips = find_shards(args.data), args.data, 0
        else:
            classes = min(101, args.clips)
            per_class = math.ceil(args.clips / classes)
            start = time.perf_counter()
            shards = [
                str(p)
                for p in write_synthetic(
                    work / "shards",
                    clips_per_class=per_class,
                    frames=args.frames,
                    dim=args.dim,
                    classes=classes,
                    seed=0,
                )
            ]
            clips = per_class * classes
            pattern = str(work / "shards" / "*.tfrecord")
            print(
                f"generated {clips} synthetic clips ({args.frames} x {args.dim}) in "
                f"{time.perf_counter() - start:.1f} s"
            )
        cfg = {
            "shards": shards,
            "pattern": pattern,
            "cache_dir": str(work / "cache"),
            "tfrecord_bytes": sum(os.path.getsize(p) for p in shards),
            "clips": clips,
            "batch_size": args.batch_size,
            "tfrecord_clips": args.tfrecord_clips,
        }
        results: dict[str, dict] = {}
        if not clips:  # existing shards: count their clips first
            cfg["clips"] = run_child("records", {**cfg, "clips": 1})["clips"]
        for name, (_, _, _, reads, state) in MEASUREMENTS.items():
            runs = []
            for _ in range(args.repeats):
                files = shards if reads == "shards" else _cache_files(cfg)
                resident = prepare_files(files, state) if files else float("nan")
                runs.append({**run_child(name, cfg), "resident": resident})
            best = min(runs, key=lambda r: r["seconds"] / r["clips"])
            worst = max(r["seconds"] / r["clips"] for r in runs)
            results[name] = {**best, "spread": worst / (best["seconds"] / best["clips"])}
        print_report(results, cfg, args.repeats)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _cache_files(cfg: dict) -> list[str]:
    folder = Path(cfg["cache_dir"])
    return [str(p) for p in folder.glob("*/frames.f16")] if folder.is_dir() else []


def print_report(results: dict, cfg: dict, repeats: int) -> None:
    cache_bytes = results["memmap"]["bytes"]
    fp32_mb = cache_bytes * 2 / 1e6
    print(f"\ncommand: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"data: {cfg['clips']} clips in {len(cfg['shards'])} shards: "
        f"{cfg['tfrecord_bytes'] / 1e9:.2f} GB of TFRecord (float32, padded), "
        f"{cache_bytes / 1e6:.0f} MB fp16 cache (real frames only; {fp32_mb:.0f} MB as "
        f"float32); {os.cpu_count()} CPUs"
    )
    print(f"fastest of {repeats} runs per row, each in a fresh process; spread = slowest/fastest")
    header = (
        f"{'measurement':<42}{'page cache':>11}{'videos/s':>10}{'MB/s':>8}  {'of':<11}"
        f"{'spread':>7}{'peak RSS':>9}{'private':>9}{'imports':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        _, label, unit, _, state = MEASUREMENTS[name]
        if name == "tfrecord":
            label += f" ({r['clips']} clips)"
        mb_s = r["bytes"] / 1e6 / r["seconds"]
        private = r["peak_anon_mb"] - r["baseline_anon_mb"]
        print(
            f"{label:<42}{state + ' ' + _pct(r['resident']):>11}"
            f"{r['clips'] / r['seconds']:>10.0f}{mb_s:>8.0f}  {unit:<11}{r['spread']:>6.1f}x"
            f"{r['peak_rss_mb']:>7.0f}MB{private:>7.0f}MB{r['baseline_mb']:>7.0f}MB"
        )
    print(
        "page cache: state set before the run (warm = read just before, cold = dropped with "
        "posix_fadvise DONTNEED) and the share of the files resident then (mincore).\n"
        "peak RSS = ru_maxrss, which counts the file pages a memmap maps (shared page cache); "
        "private = peak RssAnon above the RSS after imports; imports = RSS before the work."
    )

    def rate(name: str) -> float:
        return results[name]["clips"] / results[name]["seconds"]

    print("\nratios (targets from the design):")
    for a, b, what, target in (
        ("epoch_next", "records", "cache epoch (warm) vs decode (warm)", 5.0),
        ("epoch_first", "records", "cache 1st epoch (warm) vs decode (warm)", 5.0),
        ("epoch_cold", "records_cold", "cache epoch (cold) vs decode (cold)", 5.0),
        ("epoch_next", "records_cold", "cache epoch (warm) vs decode (cold)", 5.0),
        ("epoch_next", "tfrecord", "cache epoch (warm) vs tfrecord package (warm)", 5.0),
    ):
        ratio = rate(a) / rate(b)
        print(
            f"  {what:<46} {ratio:5.1f}x faster  (target >= {target:.0f}x: "
            f"{'met' if ratio >= target else 'missed'})"
        )
    for a, b, what in (("raw", "records", "warm"), ("raw_cold", "records_cold", "cold")):
        ratio = rate(a) / rate(b)
        print(
            f"  {'decode vs raw read (' + what + ')':<46} {ratio:5.2f}x slower (target <= 1.5x: "
            f"{'met' if ratio <= 1.5 else 'missed'})"
        )
    print(
        f"  {'decode: records vs tfrecord package':<46} "
        f"{rate('records') / rate('tfrecord'):5.1f}x faster"
    )
    private = max(
        results[n]["peak_anon_mb"] - results[n]["baseline_anon_mb"]
        for n in ("epoch_first", "epoch_next", "epoch_cold")
    )
    print(
        f"  {'cache epoch private memory':<46} {private:5.0f} MB vs {fp32_mb:.0f} MB of float32 "
        f"data ({private / fp32_mb:.0%}; batch {cfg['batch_size']} x up to 250 frames, "
        "a few batches in flight)"
    )


def _pct(x) -> str:
    return "n/a" if x is None or x != x else f"{x:.0%}"


if __name__ == "__main__":
    sys.exit(main())
