"""A pure-Python reader of TensorFlow checkpoints (``PREFIX.index`` + ``PREFIX.data-*``).

The format (TensorFlow's "tensor bundle"):

* ``PREFIX.index`` is a sorted-string table (LevelDB's layout): data blocks of prefix-compressed
  ``(key, value)`` entries, an index block pointing at them, and a 48-byte footer holding the
  index block's position and a magic number. The entry under the empty key is a
  ``BundleHeaderProto`` (number of shards, byte order); every other key is a tensor name whose
  value is a ``BundleEntryProto``: dtype, shape, shard, offset and size in the data file.
* ``PREFIX.data-SSSSS-of-NNNNN`` holds the tensors' raw little-endian bytes, back to back.

Only uncompressed tables (what TensorFlow writes) and plain numeric dtypes are read. Nothing
from TensorFlow is imported; the protobuf messages are decoded by hand (a few fields each).
Checksums are verified as TensorFlow verifies them: each table block ends with a type byte and
the masked CRC-32C of the block and that byte, and each tensor's entry holds the masked
CRC-32C of its bytes in the data file, so a flipped bit is an error, never a wrong weight.
"""

from __future__ import annotations

import os
import struct

import numpy as np
from numba import njit

_MAGIC = 0xDB4775248B80FB57
_FOOTER = 48
# TensorFlow DataType enum -> numpy dtype (the numeric types a checkpoint of weights holds).
_DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?",
           17: "<u2", 19: "<f2", 22: "<u4", 23: "<u8"}  # fmt: skip


def _crc_table() -> np.ndarray:
    """The byte table of CRC-32C (Castagnoli, reflected polynomial 0x82F63B78)."""
    table = np.zeros(256, np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table[i] = c
    return table


_CRC_TABLE = _crc_table()


@njit(cache=True)
def _crc32c_kernel(data, table):
    """CRC-32C of the bytes ``data`` (uint8, (n,)), one table lookup per byte."""
    c = np.uint32(0xFFFFFFFF)
    for b in data:
        c = table[(c ^ b) & np.uint32(0xFF)] ^ (c >> np.uint32(8))
    return c ^ np.uint32(0xFFFFFFFF)


def masked_crc32c(data: bytes, start: int = 0, size: int | None = None) -> int:
    """TensorFlow's (LevelDB's) masked CRC-32C of ``data[start : start + size]``: the CRC
    rotated right by 15 bits plus 0xA282EAD8, as stored in its files."""
    view = np.frombuffer(data, np.uint8, len(data) - start if size is None else size, start)
    c = int(_crc32c_kernel(view, _CRC_TABLE))
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


class _Reader:
    """A cursor over bytes; every read past the end is a ValueError naming ``source``."""

    def __init__(self, data: bytes, source: str, pos: int = 0, end: int | None = None):
        self.data, self.source, self.pos = data, source, pos
        self.end = len(data) if end is None else end

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.end:
            raise ValueError(f"{self.source}: truncated or corrupt checkpoint index")

    def varint(self) -> int:
        shift = result = 0
        while True:
            self.need(1)
            b = self.data[self.pos]
            self.pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise ValueError(f"{self.source}: corrupt varint in the checkpoint index")

    def take(self, n: int) -> bytes:
        self.need(n)
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out


def _fields(data: bytes, source: str) -> dict[int, list]:
    """Decode one protobuf message into {field number: [values]} (varints, bytes, fixed)."""
    r, out = _Reader(data, source), {}
    while r.pos < r.end:
        key = r.varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = r.varint()
        elif wire == 1:
            value = struct.unpack("<Q", r.take(8))[0]
        elif wire == 2:
            value = r.take(r.varint())
        elif wire == 5:
            value = struct.unpack("<I", r.take(4))[0]
        else:
            raise ValueError(f"{source}: unsupported protobuf wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def _block_entries(data: bytes, offset: int, size: int, source: str) -> list[tuple[bytes, bytes]]:
    """The (key, value) entries of one table block (keys are prefix-compressed)."""
    if offset + size + 5 > len(data) or size < 4:
        raise ValueError(f"{source}: truncated checkpoint index (a block lies past the end)")
    if data[offset + size] != 0:
        raise ValueError(f"{source}: compressed checkpoint index blocks are not supported")
    stored = struct.unpack_from("<I", data, offset + size + 1)[0]
    if stored != masked_crc32c(data, offset, size + 1):  # over the block and its type byte
        raise ValueError(f"{source}: corrupt checkpoint index (a block's checksum does not match)")
    num_restarts = struct.unpack_from("<I", data, offset + size - 4)[0]
    end = offset + size - 4 * (num_restarts + 1)
    if end < offset:
        raise ValueError(f"{source}: corrupt checkpoint index block")
    r, entries, key = _Reader(data, source, offset, end), [], b""
    while r.pos < end:
        shared, non_shared, value_len = r.varint(), r.varint(), r.varint()
        key = key[:shared] + r.take(non_shared)
        entries.append((key, r.take(value_len)))
    return entries


def _handle(value: bytes, source: str) -> tuple[int, int]:
    r = _Reader(value, source)
    return r.varint(), r.varint()


def read_index(path: str) -> dict[str, bytes]:
    """All ``{key: value}`` entries of a ``.index`` table (values are serialized protos)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < _FOOTER or struct.unpack_from("<Q", data, len(data) - 8)[0] != _MAGIC:
        raise ValueError(f"{path}: not a TensorFlow checkpoint index (no table footer)")
    r = _Reader(data, path, len(data) - _FOOTER)
    r.varint(), r.varint()  # the metaindex block's handle (unused)
    index_offset, index_size = r.varint(), r.varint()
    out = {}
    for _, handle in _block_entries(data, index_offset, index_size, path):
        offset, size = _handle(handle, path)
        for key, value in _block_entries(data, offset, size, path):
            out[key.decode("utf-8", "replace")] = value
    return out


def _entry(name: str, value: bytes, source: str) -> tuple:
    """(dtype, shape, shard, offset, size, masked crc32c or None) of one BundleEntryProto."""
    f = _fields(value, source)
    if 7 in f:
        raise ValueError(f"{source}: {name} is stored in slices (partitioned), not supported")
    dtype = f.get(1, [0])[0]
    if dtype not in _DTYPES:
        raise ValueError(f"{source}: {name} has TensorFlow dtype {dtype}, which is not supported")
    shape = []
    for dim in _fields(f[2][0], source).get(2, []) if 2 in f else []:
        shape.append(_fields(dim, source).get(1, [0])[0])
    if len(shape) > 8 or not all(0 <= d < 2**40 for d in shape):
        raise ValueError(f"{source}: {name} has an impossible shape {tuple(shape)[:9]} (corrupt)")
    return (np.dtype(_DTYPES[dtype]), tuple(shape), f.get(3, [0])[0], f.get(4, [0])[0],
            f.get(5, [0])[0], f.get(6, [None])[0])  # fmt: skip


def read_checkpoint(prefix) -> dict[str, np.ndarray]:
    """Read every tensor of the checkpoint ``prefix`` (``prefix.index`` + data files).

    Returns ``{name: array}`` (owned copies, little-endian). Raises FileNotFoundError for a
    missing index or data file, and ValueError naming the file for a truncated or corrupt one.
    """
    prefix = os.fspath(prefix)
    if prefix.endswith(".index"):
        prefix = prefix[: -len(".index")]
    index_path = prefix + ".index"
    if not os.path.isfile(index_path):
        raise FileNotFoundError(f"load_tf_checkpoint: no such file: {index_path}")
    entries = read_index(index_path)
    header = _fields(entries.pop("", b""), index_path)
    num_shards = header.get(1, [1])[0]
    if header.get(2, [0])[0] != 0:
        raise ValueError(f"{index_path}: a big-endian checkpoint is not supported")
    shards: dict[int, bytes] = {}
    out = {}
    for name, value in entries.items():
        dtype, shape, shard, offset, size, crc = _entry(name, value, index_path)
        if shard not in shards:
            shards[shard] = _read_shard(prefix, shard, num_shards)
        data = shards[shard]
        count = int(np.prod(shape, dtype=np.int64))
        if size != count * dtype.itemsize or offset + size > len(data):
            raise ValueError(
                f"{prefix}.data-{shard:05d}-of-{num_shards:05d}: {name} needs bytes"
                f" [{offset}, {offset + size}) of shape {shape}, the file has {len(data)}"
                " (truncated or corrupt)"
            )
        if crc is not None and masked_crc32c(data, offset, size) != crc:
            raise ValueError(
                f"{prefix}.data-{shard:05d}-of-{num_shards:05d}: the bytes of {name} do not"
                " match their checksum (a corrupt data file)"
            )
        out[name] = np.frombuffer(data, dtype, count, offset).reshape(shape).copy()
    return out


def _read_shard(prefix: str, shard: int, num_shards: int) -> bytes:
    path = f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_tf_checkpoint: no such file: {path}")
    with open(path, "rb") as f:
        return f.read()
