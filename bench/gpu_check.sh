#!/usr/bin/env bash
# Every GPU figure in one command: the GPU tests, bench/train.py, bench/gpu_study.py -> $OUT.
#
#   bench/gpu_check.sh --fetch-wheels   # here, with network: the wheels below into .whl/
#   bench/gpu_check.sh                  # on the GPU machine (no network), from the repo root
#   bench/gpu_check.sh --dry-run        # any CPU: the same steps at toy sizes on --device cpu
#
# The GPU machine has Python 3.12 with PyTorch (CUDA) and numpy, and nothing else of ours. It
# needs exactly these wheels (--no-deps, into a folder of their own put first on PYTHONPATH, so
# the machine's packages are left as they are), about 25 MB together:
#   optuna==5.0.0 alembic==1.20.1 colorlog==6.12.0 Mako==1.4.3 MarkupSafe==3.0.4 (cp312)
#   SQLAlchemy==2.1.9 (cp312) PyYAML==6.0.4 (cp312) tqdm==4.70.1 packaging==26.4
#   typing_extensions==4.16.0 protobuf==7.36.2 (cp310-abi3) crc32c==2.9.post0 (cp312)
#   tfrecord==1.14.6 (pure Python; PyPI has only its sdist, so --fetch-wheels builds the wheel)
#   plotly==7.1.0 narwhals==2.29.0 pillow==13.0.0 (cp312)
#   pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 Pygments==2.21.0
# Not carried: torch and numpy (the machine's own); wandb 0.31.0 (a 20 MB wheel; every run here
# has W&B disabled); av 18.1.0 (36 MB; only tests/test_extract.py imports it, so its GPU test
# does not run here). With both the tree would pass the device's 64 MiB limit.
#
# Budget: 8 minutes on an H100/H200. pytest -m gpu (~1-2 min), bench/train.py at the default
# configuration (GRU 2 x 256, batch 256, up to 250 frames, 2048-d, 2048 clips, 7 epochs per
# variant; ~1 min), then bench/gpu_study.py sized to the time left: with >= 4 min left 101
# classes x 20 clips (2,020 clips, 250 x 2048), 10 trials x 3 epochs, --jobs 1 and 4; else
# 101 x 8 clips, 4 trials x 2 epochs, --jobs 1 and 2. Either way it is stopped at the 8-minute
# mark (the figures of the steps before it are kept).
# Writes $OUT/gpu_check.json (every figure) and $OUT/gpu_check.md (one table), plus each step's
# log. OUT defaults to bench/out/.
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=gpu
case "${1:-}" in
  --dry-run) MODE=dry ;;
  --fetch-wheels) MODE=fetch ;;
  "") ;;
  *) echo "usage: bench/gpu_check.sh [--dry-run | --fetch-wheels]" >&2; exit 2 ;;
esac

WHEELS=(optuna==5.0.0 alembic==1.20.1 colorlog==6.12.0 Mako==1.4.3 MarkupSafe==3.0.4
        SQLAlchemy==2.1.9 PyYAML==6.0.4 tqdm==4.70.1 packaging==26.4 typing_extensions==4.16.0
        protobuf==7.36.2 crc32c==2.9.post0 plotly==7.1.0 narwhals==2.29.0 pillow==13.0.0
        pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 Pygments==2.21.0)
BUDGET_S=480
GPU_TESTS=(tests/test_cuda_streams.py tests/test_batches.py tests/test_training.py
           tests/test_study.py)

if [[ $MODE == fetch ]]; then
  PY=${PYTHON:-python3}
  [[ -x .venv/bin/python ]] && PY=.venv/bin/python
  set -e
  mkdir -p .whl
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 -d .whl "${WHEELS[@]}"
  "$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl tfrecord==1.14.6
  ls -l .whl && du -sh .whl
  exit 0
fi

started=$SECONDS
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export WANDB_MODE=disabled WANDB_SILENT=true PYTHONUNBUFFERED=1
export CUBLAS_WORKSPACE_CONFIG=:4096:8  # deterministic cuBLAS for the stream tests

if [[ $MODE == gpu ]]; then
  PY=python3
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$WORK/site" .whl/*.whl || { echo "installing .whl/ failed" >&2; exit 1; }
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
  # Without a GPU every test would skip and the check would "pass": stop here instead.
  python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'" || exit 1
  TRAIN_ARGS=(--device cuda)
else
  PY=python3
  [[ -x .venv/bin/python ]] && PY=.venv/bin/python
  TRAIN_ARGS=(--device cpu --clips 16 --batch-size 8 --frames 20 --dim 32 --hidden 16
              --repeats 2)
fi

status=0
step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, remember a failure
  local name=$1; shift
  echo "== $name: $*"
  "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "$name $rc" >>"$WORK/steps"
  [[ $rc == 0 ]] || status=1
}

step pytest "$PY" -m pytest -q -p no:cacheprovider -m gpu --junitxml="$WORK/pytest.xml" \
  "${GPU_TESTS[@]}"
step train "$PY" bench/train.py "${TRAIN_ARGS[@]}" --json "$WORK/train.json"

left=$((BUDGET_S - (SECONDS - started) - 20))  # 20 s for the summary
if [[ $MODE == dry ]]; then
  STUDY_ARGS=(--classes 3 --clips-per-class 25 --frames 8 --dim 8 --trials 2 --epochs 1
              --jobs-list 1 2 --throughput-epochs 1 --write-workers 1 --device cpu)
  left=$BUDGET_S
elif ((left >= 240)); then
  STUDY_ARGS=(--classes 101 --clips-per-class 20 --trials 10 --epochs 3 --jobs-list 1 4
              --device cuda)
else
  STUDY_ARGS=(--classes 101 --clips-per-class 8 --trials 4 --epochs 2 --jobs-list 1 2
              --device cuda)
fi
if ((left > 30)); then
  step gpu_study timeout --signal=INT --kill-after=10 "$left" \
    "$PY" bench/gpu_study.py "${STUDY_ARGS[@]}" --json "$WORK/gpu_study.json"
else
  echo "gpu_study skipped: ${left}s left" | tee "$OUT/gpu_study.log"
  echo "gpu_study skipped" >>"$WORK/steps"
fi

"$PY" - "$WORK" "$OUT" "$MODE" "$((SECONDS - started))" <<'EOF' || status=1
"""Merge the steps' figures into one JSON file and one markdown table."""
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

work, out, mode, seconds = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
steps = dict(line.split(" ", 1) for line in (work / "steps").read_text().splitlines())
report = {"mode": mode, "seconds": seconds, "steps": steps}
rows = []
junit = work / "pytest.xml"
if junit.exists():
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    report["pytest"] = {**counts, "failed": failed}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    rows.append(("pytest -m gpu", f"{passed} passed, {counts['failures'] + counts['errors']} "
                 f"failed, {counts['skipped']} skipped", ", ".join(failed)))
for name in ("train", "gpu_study"):
    path = work / f"{name}.json"
    if path.exists():
        report[name] = json.loads(path.read_text())
if "train" in report:
    t = report["train"]
    rows.append(("device", t["device_name"], f"torch {t['torch']}"))
    for variant, f in t["examples_per_s"].items():
        rows.append((f"bench/train.py {variant}, examples/s",
                     f"{f['median']:.0f} (range {f['min']:.0f}-{f['max']:.0f})",
                     f"{f['ratio_median']:.2f}x naive (range {f['ratio_min']:.2f}-"
                     f"{f['ratio_max']:.2f}x), {t['repeats']} epochs of {t['clips']} clips"))
if "gpu_study" in report:
    g = report["gpu_study"]
    size = f"{g['clips']} clips, {g['frames']} x {g['dim']}, {g['trials']} trials"
    rows.append(("gpu_study decode", f"{g['decode_s']:.1f} s", size))
    rows.append(("gpu_study default config, examples/s",
                 f"{g['default_config_examples_per_s'][-1]:.0f}", "last epoch"))
    for s in g["studies"]:
        util = s["gpu_util"]
        use = f"GPU util mean {sum(util) / len(util):.0f}%" if util else "no GPU samples"
        rows.append((f"gpu_study --jobs {s['jobs']}, trials/hour", f"{s['trials_per_hour']:.0f}",
                     f"{s['trials']} trials in {s['span_s']:.1f} s; {use}"))
(out / "gpu_check.json").write_text(json.dumps(report, indent=2))
lines = [f"# bench/gpu_check.sh ({mode}, {seconds} s)", "", "| what | figure | note |",
         "|---|---:|---|", *(f"| {a} | {b} | {c} |" for a, b, c in rows),
         "", "steps: " + ", ".join(f"{k} {v}" for k, v in steps.items())]
(out / "gpu_check.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
echo "gpu_check: $((SECONDS - started)) s, figures in $OUT/gpu_check.json and $OUT/gpu_check.md"
exit $status
