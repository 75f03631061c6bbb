"""Extract per-frame ImageNet CNN features from UCF-101 videos into TFRecord shards.

    python -m datasets.extract --videos UCF-101/ --out data/ucf101/

Each video: the first --seconds seconds, resampled to --fps by timestamp, each frame resized so
its shorter side is --image-size and centre-cropped to a square, ImageNet-normalised, through a
torchvision ResNet up to its global average pool (2048-d for ResNet-50), zero-padded to
seconds * fps frames by the record writer. Shards hold --shard-size consecutive videos of the
sorted video list, so a shard's contents never depend on which videos failed to decode.
Frames decode in DataLoader worker processes while the CNN runs in large batches.

videos.py finds, labels and decodes the videos and plans the shards; encoder.py is the CNN and
its weights; resume.py keeps the bookkeeping that lets a killed run resume; run.py ties them
into one run; cli.py is the command line (and __main__.py runs it).
"""

from datasets.extract.cli import build_parser, config_from_args, main
from datasets.extract.encoder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODELS,
    RANDOM_INIT_SEED,
    ClipBatcher,
    FrameEncoder,
    WeightsNotFound,
    find_cached_weights,
    load_encoder,
    weight_files,
)
from datasets.extract.resume import FORMAT_VERSION, STATE_DIR, Skipped, skipped_path
from datasets.extract.run import ExtractConfig, ExtractResult, extract
from datasets.extract.videos import (
    CROP,
    SHARD_PREFIX,
    VIDEO_SUFFIX,
    Shard,
    Video,
    decode_video,
    find_videos,
    label_videos,
    plan_shards,
)

__all__ = [
    "CROP",
    "FORMAT_VERSION",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODELS",
    "RANDOM_INIT_SEED",
    "SHARD_PREFIX",
    "STATE_DIR",
    "VIDEO_SUFFIX",
    "ClipBatcher",
    "ExtractConfig",
    "ExtractResult",
    "FrameEncoder",
    "Shard",
    "Skipped",
    "Video",
    "WeightsNotFound",
    "build_parser",
    "config_from_args",
    "decode_video",
    "extract",
    "find_cached_weights",
    "find_videos",
    "label_videos",
    "load_encoder",
    "main",
    "plan_shards",
    "skipped_path",
    "weight_files",
]
