"""Read TensorFlow checkpoints without TensorFlow.

A TF checkpoint `PREFIX` is a tensor bundle: `PREFIX.index`, a LevelDB-style sorted table whose
keys are variable names and whose values are serialized BundleEntryProto records (dtype, shape,
shard, offset, size, masked CRC32C), and `PREFIX.data-XXXXX-of-YYYYY`, the shards that hold the raw
tensor bytes. This module parses both with the standard library and numpy, and checks every
tensor's CRC32C as TensorFlow does, so a damaged file is caught instead of loaded.
"""
import os
import re
import struct

import numpy as np

from io_utils import SpanElectraError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_BYTES = 48
# tensorflow/core/framework/types.proto DataType -> numpy (bfloat16 is read as uint16, widened below)
DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 9: np.int64,
          10: np.bool_, 14: np.uint16, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64}
DT_BFLOAT16 = 14


# ---------------------------------------------------------------- CRC32C (Castagnoli), as TensorFlow masks it
def _crc_tables():
    base = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        base.append(crc)
    tables = [base]
    for _ in range(7):  # slicing-by-8: eight bytes per step
        prev = tables[-1]
        tables.append([(prev[i] >> 8) ^ base[prev[i] & 0xFF] for i in range(256)])
    return tables


_T = _crc_tables()


def crc32c(data):
    """CRC32C of bytes (the google_crc32c package's C code when it is installed, else pure Python)."""
    try:
        import google_crc32c  # optional speed-up
        return google_crc32c.value(bytes(data))
    except ImportError:
        pass
    t0, t1, t2, t3, t4, t5, t6, t7 = _T
    crc = 0xFFFFFFFF
    view = memoryview(data)
    whole = len(view) - len(view) % 8
    for (word,) in struct.iter_unpack("<Q", view[:whole]):
        low = (word & 0xFFFFFFFF) ^ crc
        high = word >> 32
        crc = (t7[low & 0xFF] ^ t6[(low >> 8) & 0xFF] ^ t5[(low >> 16) & 0xFF] ^ t4[low >> 24] ^
               t3[high & 0xFF] ^ t2[(high >> 8) & 0xFF] ^ t1[(high >> 16) & 0xFF] ^ t0[high >> 24])
    for byte in view[whole:]:
        crc = t0[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data):
    """TensorFlow's stored form of a CRC: rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ---------------------------------------------------------------- protobuf and table parsing
def _varint(buf, pos):
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf):
    """(field number, wire type, value) of a serialized protobuf message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = struct.unpack("<I", buf[pos:pos + 4])[0], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _shape(buf):
    dims = []
    for number, _, value in _fields(buf):
        if number == 2:  # TensorShapeProto.dim
            size = next((v for n, _, v in _fields(value) if n == 1), 0)
            dims.append(size - (1 << 64) if size >= 1 << 63 else size)
        elif number == 3 and value:
            raise ValueError("a tensor of unknown rank")
    return tuple(dims)


def parse_entry(buf):
    """A BundleEntryProto as a dict: dtype, shape, shard_id, offset, size, crc32c, sliced."""
    entry = {"dtype": 0, "shape": (), "shard_id": 0, "offset": 0, "size": 0, "crc32c": None, "sliced": False}
    for number, _, value in _fields(buf):
        if number == 1:
            entry["dtype"] = value
        elif number == 2:
            entry["shape"] = _shape(value)
        elif number in (3, 4, 5):
            entry[("shard_id", "offset", "size")[number - 3]] = value
        elif number == 6:
            entry["crc32c"] = value
        elif number == 7:
            entry["sliced"] = True
    return entry


def _block(data, offset, size, where):
    """The entries (key, value) of one table block."""
    if offset + size + 5 > len(data):
        raise ValueError(f"{where}: a block runs past the end of the file")
    if data[offset + size] != 0:
        raise ValueError(f"{where}: a compressed block (type {data[offset + size]}); TensorFlow writes bundles "
                         "uncompressed")
    block = data[offset:offset + size]
    num_restarts = struct.unpack("<I", block[-4:])[0]
    end = len(block) - 4 * (num_restarts + 1)
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + length]
        pos += length


def read_index(path):
    """{name: entry} of a checkpoint's .index table (the header entry, key '', left out)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < FOOTER_BYTES or struct.unpack("<Q", data[-8:])[0] != TABLE_MAGIC:
        raise ValueError(f"'{path}' is not a TensorFlow checkpoint index (no table footer)")
    footer = data[-FOOTER_BYTES:]
    _, pos = _varint(footer, 0)  # the metaindex block's handle (unused by bundles)
    _, pos = _varint(footer, pos)
    index_offset, pos = _varint(footer, pos)
    index_size, _ = _varint(footer, pos)
    entries = {}
    for _, handle in _block(data, index_offset, index_size, path):
        offset, pos = _varint(handle, 0)
        size, _ = _varint(handle, pos)
        for key, value in _block(data, offset, size, path):
            if key:
                entries[key.decode("utf-8")] = parse_entry(value)
            else:
                header = {n: v for n, _, v in _fields(value)}
                if header.get(2, 0) != 0:
                    raise ValueError(f"'{path}' holds big-endian tensors, which this reader does not convert")
                entries[""] = {"num_shards": header.get(1, 1)}
    return entries


# ---------------------------------------------------------------- the checkpoint
def resolve_prefix(spec):
    """The checkpoint prefix for a folder (its `checkpoint` file, else its only .index) or a prefix
    (or a path to one of its files)."""
    spec = re.sub(r"\.(index|data-\d+-of-\d+|meta)$", "", spec)
    if os.path.isdir(spec):
        state = os.path.join(spec, "checkpoint")
        if os.path.isfile(state):
            with open(state, encoding="utf-8") as f:
                match = re.search(r'^model_checkpoint_path:\s*"(.*)"', f.read(), re.M)
            if match:  # relative to the folder, as TensorFlow reads it; an absolute one may be another machine's
                name = match.group(1)
                if os.path.isabs(name) and os.path.isfile(name + ".index"):
                    return name
                inside = os.path.join(spec, name)
                return inside if os.path.isfile(inside + ".index") else os.path.join(spec, os.path.basename(name))
        found = sorted(n[:-6] for n in os.listdir(spec) if n.endswith(".index"))
        if len(found) == 1:
            return os.path.join(spec, found[0])
        raise SpanElectraError(f"checkpoint: '{spec}' holds {'no' if not found else len(found)} checkpoint(s) "
                               "(.index files) and no `checkpoint` file naming one; pass the prefix, e.g. "
                               "DIR/model.ckpt-1000000")
    return spec


class TFCheckpoint:
    """The tensors of a TensorFlow checkpoint, read on demand and checked against their CRC32C."""

    def __init__(self, spec):
        self.prefix = resolve_prefix(spec)
        index = self.prefix + ".index"
        if not os.path.isfile(index):
            raise SpanElectraError(f"checkpoint: '{index}' does not exist; pass a google-research/electra checkpoint "
                                   "folder or prefix (DIR/model.ckpt-N, beside model.ckpt-N.index and .data-*)")
        try:
            self.entries = read_index(index)
        except (ValueError, IndexError, KeyError, TypeError, struct.error, UnicodeDecodeError) as e:
            raise SpanElectraError(f"checkpoint: cannot read '{index}' ({e}); the file is damaged or not a "
                                   "TensorFlow checkpoint") from None
        self.num_shards = self.entries.pop("", {}).get("num_shards", 1)

    def names(self):
        return sorted(self.entries)

    def shape(self, name):
        return self.entries[name]["shape"]

    def shard_path(self, shard_id):
        return f"{self.prefix}.data-{shard_id:05d}-of-{self.num_shards:05d}"

    def tensor(self, name):
        """The tensor `name` as a numpy array (bfloat16 widened to float32)."""
        entry = self.entries[name]
        if entry["sliced"]:
            raise SpanElectraError(f"checkpoint: '{name}' is a partitioned variable, which this reader does not join")
        if entry["dtype"] not in DTYPES:
            raise SpanElectraError(f"checkpoint: '{name}' has TensorFlow dtype {entry['dtype']}, not a number type")
        path = self.shard_path(entry["shard_id"])
        try:
            with open(path, "rb") as f:
                f.seek(entry["offset"])
                data = f.read(entry["size"])
        except OSError as e:
            raise SpanElectraError(f"checkpoint: cannot read '{path}' ({e.strerror}); it must sit beside the .index "
                                   "file") from None
        if len(data) != entry["size"]:
            raise SpanElectraError(f"checkpoint: '{path}' ends before tensor '{name}' (truncated); download it again")
        if entry["crc32c"] is not None and masked_crc32c(data) != entry["crc32c"]:
            raise SpanElectraError(f"checkpoint: tensor '{name}' in '{path}' fails its CRC32C check (the file is "
                                   "damaged); download it again")
        array = np.frombuffer(data, dtype=DTYPES[entry["dtype"]]).reshape(entry["shape"])
        if entry["dtype"] == DT_BFLOAT16:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array
