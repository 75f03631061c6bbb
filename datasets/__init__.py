"""Data: TFRecord shards of UCF-101 clips -> decoded cache -> split -> batches.

The public names are listed here so `from datasets import open_split` shows the API. They are
imported on first use (PEP 562), so `from datasets.errors import DataError` stays free of torch.
"""

from importlib import import_module
from typing import Any

_PUBLIC = {
    "UserError": "errors",
    "DataError": "errors",
    "Clip": "records",
    "read_clips": "records",
    "write_clips": "records",
    "find_shards": "records",
    "FeatureSet": "cache",
    "load_features": "cache",
    "SplitSpec": "splits",
    "split_parts": "splits",
    "Batch": "batches",
    "BatchLoader": "batches",
    "SplitData": "loading",
    "open_split": "loading",
    "create_loaders": "loading",
    "resident_clips": "loading",
    "resolve_device": "device",
    "write_synthetic": "synthetic",
    "CLASS_NAMES": "ucf101",
    "NUM_CLASSES": "ucf101",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'datasets' has no attribute {name!r}")
    return getattr(import_module(f"datasets.{_PUBLIC[name]}"), name)
