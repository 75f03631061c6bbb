"""`python -m datasets inspect`: what a set of TFRecord shards holds, checked record by record."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from datasets.errors import DataError
from datasets.records import find_shards, read_clips
from datasets.splits import SplitSpec, split_parts, validation_groups
from datasets.ucf101 import CLASS_NAMES, NUM_CLASSES

HELP = "check every record of some TFRecord shards and summarise them"


def _parts(filenames: Sequence[str], spec: SplitSpec) -> dict[str, Any]:
    """Sizes of the split's parts, or why they cannot be computed (never raises DataError)."""
    head = {"split": spec.split, "val_groups": spec.val_groups, "seed": spec.seed}
    head["lists"] = spec.lists_dir
    try:
        parts = split_parts(filenames, spec)
        groups = validation_groups(filenames, spec)
    except DataError as err:
        return {**head, "available": False, "reason": str(err)}
    sizes = {name: int(idx.size) for name, idx in parts.items()}
    return {**head, "available": True, **sizes, "validation_group_ids": groups}


def inspect_shards(pattern: str, spec: SplitSpec | None = None) -> dict[str, Any]:
    """Return a JSON-ready summary of the shards matching pattern; DataError on bad records."""
    spec = spec or SplitSpec()
    paths = find_shards(pattern)
    records: list[dict[str, Any]] = []
    fps_counts: Counter[float] = Counter()
    dim = 0
    for clip in read_clips(paths):
        dim = int(clip.features.shape[1])
        fps_counts[clip.fps] += 1
        records.append(
            {
                "filename": clip.filename,
                "text": clip.text,
                "label": clip.label,
                "sequence_length": clip.sequence_length,
            }
        )
    lengths = [r["sequence_length"] for r in records]
    by_label = Counter(r["label"] for r in records)
    names_of_label: dict[int, Counter[str]] = {}
    for r in records:
        names_of_label.setdefault(r["label"], Counter())[r["text"]] += 1
    classes: dict[str, int] = {}
    warnings = []
    for label in sorted(by_label):
        texts = names_of_label[label]
        name = texts.most_common(1)[0][0]
        classes[name] = classes.get(name, 0) + by_label[label]
        if len(texts) > 1:
            warnings.append(f"label {label} comes with several texts: {dict(texts)}")
        official = CLASS_NAMES[label - 1] if 1 <= label <= NUM_CLASSES else None
        if official is not None and name.lower() != official.lower():
            warnings.append(f"label {label} is {official!r} in UCF-101 but the text says {name!r}")
    return {
        "pattern": pattern,
        "files": paths,
        "clips": len(records),
        "feature_dim": dim,
        "fps": fps_counts.most_common(1)[0][0],
        "fps_values": sorted(fps_counts),
        "length": {
            "min": min(lengths),
            "mean": sum(lengths) / len(lengths),
            "max": max(lengths),
        },
        "classes": classes,
        "labels": {str(k): by_label[k] for k in sorted(by_label)},
        "parts": _parts([r["filename"] for r in records], spec),
        "warnings": warnings,
        "records": records,
    }


def format_report(report: dict[str, Any]) -> str:
    """Return the human-readable form of an inspect_shards report."""
    files = report["files"]
    length = report["length"]
    other_fps = [f for f in report["fps_values"] if f != report["fps"]]
    lines = [
        f"shards:        {len(files)} file(s): {', '.join(files[:3])}"
        + (f", ... ({len(files) - 3} more)" if len(files) > 3 else ""),
        f"clips:         {report['clips']}",
        f"feature size:  {report['feature_dim']}",
        f"fps:           {report['fps']:g}"
        + (f" (also {', '.join(f'{f:g}' for f in other_fps)})" if other_fps else ""),
        f"length:        min {length['min']}, mean {length['mean']:.1f}, "
        f"max {length['max']} frames",
        f"classes:       {len(report['classes'])}",
    ]
    width = max(len(name) for name in report["classes"])
    lines += [f"  {name:<{width}}  {count}" for name, count in report["classes"].items()]
    parts = report["parts"]
    where = f"lists in {parts['lists']}" if parts["lists"] else f"split {parts['split']}"
    if parts["available"]:
        lines.append(
            f"parts ({where}, validation = {parts['val_groups']} training groups "
            f"{parts['validation_group_ids']}, seed {parts['seed']}): "
            f"train {parts['train']}, val {parts['val']}, test {parts['test']} clips"
        )
    else:
        lines.append(f"parts ({where}): unavailable: {parts['reason']}")
    lines += [f"warning: {w}" for w in report["warnings"]]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the inspect subcommand's arguments to its parser."""
    parser.add_argument("pattern", help="glob of TFRecord shards, quoted (e.g. 'data/ucf101/*')")
    parser.add_argument("--json", action="store_true", help="print one JSON object (default: text)")
    parser.add_argument(
        "--split", type=int, default=1, choices=(1, 2, 3), help="official split (default: 1)"
    )
    parser.add_argument(
        "--val-groups",
        type=int,
        default=4,
        help="training groups held out for validation (default: 4)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="picks the validation groups (default: 0)"
    )
    parser.add_argument(
        "--lists",
        metavar="DIR",
        default=None,
        help="folder with official trainlist0N.txt/testlist0N.txt (default: split by file name)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the inspect subcommand; print the report; return the exit code."""
    spec = SplitSpec(
        split=args.split, val_groups=args.val_groups, seed=args.seed, lists_dir=args.lists
    )
    report = inspect_shards(args.pattern, spec)
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0
