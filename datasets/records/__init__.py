"""Read, check and write TFRecord shards of UCF-101 clips stored as tf.train.SequenceExample.

framing.py finds, opens and walks shards (CRCs), wire.py parses the SequenceExample wire format,
check.py turns a parsed record into a Clip (or a DataError naming the file and record), write.py
encodes and writes clips; clip.py holds the Clip and the record keys.

Why this package frames and parses records itself instead of leaving it to the tfrecord package
(figures: 200 clips x 250 x 2048 float32, 2-core CPU, file in the page cache):

* Correctness: tfrecord's reader does not check the CRCs, so a flipped byte in a record is read
  silently (TensorFlow reports DATA_LOSS). Here both CRCs of every record are checked (crc32c).
* Speed: through the protobuf classes (`np.array(float_list.value)`) every value becomes a
  Python float: 15 MB/s; tfrecord's own sequence_loader: ~0.9 GB/s without CRC checks. The
  fast path below walks the SequenceExample wire format and, when every frame of a feature list
  is encoded the same way (what TensorFlow and write_clips produce), views all frames as one
  strided numpy array: a handful of Python steps per clip, ~6 GB/s with CRCs checked (the CRC
  alone runs at ~10 GB/s). Any other valid encoding (unpacked floats, split packed runs,
  repeated fields, ...) falls back to tfrecord.example_pb2, so it is still read right.
* Writing encodes the same wire format with numpy (packed FloatList = tag, varint length,
  `arr.astype('<f4').tobytes()`), never one Python float per value: ~1 GB/s uncompressed.
"""

from datasets.records.check import parse_record, parse_record_with_protobuf, read_clips
from datasets.records.clip import CONTEXT_KEYS, LIST_KEYS, Clip
from datasets.records.framing import find_shards, framing_digest
from datasets.records.write import encode_clip, write_clips

__all__ = [
    "CONTEXT_KEYS",
    "LIST_KEYS",
    "Clip",
    "encode_clip",
    "find_shards",
    "framing_digest",
    "parse_record",
    "parse_record_with_protobuf",
    "read_clips",
    "write_clips",
]
