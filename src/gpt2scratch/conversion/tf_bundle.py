"""TensorFlow's V2 checkpoint format (the "tensor bundle"), read with Python + numpy only.

A checkpoint ``PREFIX`` is ``PREFIX.index`` plus ``PREFIX.data-NNNNN-of-MMMMM`` shards:

- ``.index`` is an SSTable (LevelDB's table format, uncompressed): data blocks of prefix-compressed
  key/value entries with restart points, an index block pointing at them, a 48-byte footer ending in a
  magic number, and after every block a 5-byte trailer (type byte + masked CRC32C). Its keys are the
  variable names; the empty key holds a ``BundleHeaderProto``, every other value a
  ``BundleEntryProto`` (dtype, shape, shard, offset, size, masked CRC32C of the bytes).
- each data shard holds the raw little-endian tensor bytes at those offsets.

The two protobuf messages are decoded by a small wire-format decoder here, so neither TensorFlow nor
protobuf is needed. Tensors are read lazily: :meth:`TFCheckpoint.read` maps only that tensor's bytes
(``mmap``) and returns a read-only numpy view of them, released when the array is dropped. Every read
verifies the tensor's CRC32C; every table block's checksum is verified when the index is opened.

``bfloat16`` has no numpy dtype: such tensors come back as ``uint16`` arrays holding the raw bits
(``TensorInfo.dtype`` still says ``"bfloat16"``); :func:`bfloat16_to_float32` widens them exactly, and
``torch.from_numpy(bits).view(torch.bfloat16)`` gives a torch tensor without a copy.

Every problem is raised as :class:`CheckpointError` (a ``ValueError``) naming the file and, where there
is one, the tensor.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER_SIZE = 5
CRC_MASK_DELTA = 0xA282EAD8
HEADER_KEY = b""
CRC_HINT = "CRC32C mismatch: the tensor's bytes are corrupted; fetch this data file again"

# TensorFlow DataType enum → (name, numpy dtype with little-endian byte order).
DTYPES: dict[int, tuple[str, str]] = {
    1: ("float32", "<f4"),
    2: ("float64", "<f8"),
    3: ("int32", "<i4"),
    4: ("uint8", "|u1"),
    5: ("int16", "<i2"),
    6: ("int8", "|i1"),
    7: ("string", "|O"),
    8: ("complex64", "<c8"),
    9: ("int64", "<i8"),
    10: ("bool", "|b1"),
    14: ("bfloat16", "<u2"),
    17: ("uint16", "<u2"),
    18: ("complex128", "<c16"),
    19: ("float16", "<f2"),
    22: ("uint32", "<u4"),
    23: ("uint64", "<u8"),
}


class CheckpointError(ValueError):
    """A TensorFlow checkpoint that cannot be read: missing, truncated, corrupted or unsupported."""


@dataclass(frozen=True)
class TensorInfo:
    """One variable of the bundle, as its ``BundleEntryProto`` describes it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int  # masked, as stored

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


# --- checksums ---------------------------------------------------------------------------------------


def mask_crc(crc: int) -> int:
    """TensorFlow/LevelDB's masked CRC (stored so that CRCs of data containing CRCs stay well mixed)."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + CRC_MASK_DELTA) & 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    rot = (masked - CRC_MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def crc32c(data, crc: int = 0) -> int:
    """CRC32C of ``data`` (bytes, mmap or any buffer), extended from ``crc``.

    google_crc32c refuses memoryviews but takes a numpy array as it is: hashed in place, no copy."""
    return google_crc32c.extend(crc, np.frombuffer(data, dtype=np.uint8))


# --- protobuf wire format ----------------------------------------------------------------------------


def read_varint(buf: bytes, pos: int, limit: int | None = None) -> tuple[int, int]:
    """Decode a base-128 varint at ``pos``; return (value, position after it)."""
    limit = len(buf) if limit is None else limit
    value = shift = 0
    while True:
        if pos >= limit:
            raise CheckpointError("varint runs past the end of its buffer")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise CheckpointError("varint longer than 10 bytes")


def parse_message(buf: bytes) -> dict[int, list]:
    """Decode one protobuf message into {field number: [values]}: varints and fixed ints as ``int``,
    length-delimited fields as ``bytes`` (sub-messages are decoded by the caller)."""
    fields: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > len(buf):
                raise CheckpointError("fixed-width protobuf field runs past the end of the record")
            value = int.from_bytes(buf[pos : pos + width], "little")
            pos += width
        elif wire == 2:
            length, pos = read_varint(buf, pos)
            if pos + length > len(buf):
                raise CheckpointError("length-delimited protobuf field runs past the end of the record")
            value, pos = bytes(buf[pos : pos + length]), pos + length
        else:
            raise CheckpointError(f"unsupported protobuf wire type {wire} (field {number})")
        if number == 0:
            raise CheckpointError("protobuf field number 0")
        fields.setdefault(number, []).append(value)
    return fields


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _last(fields: dict[int, list], number: int, default=0):
    """Protobuf semantics for a singular field: the last occurrence wins."""
    return fields[number][-1] if number in fields else default


def _int_field(fields: dict[int, list], number: int) -> int:
    value = _last(fields, number)
    if not isinstance(value, int):
        raise CheckpointError(f"protobuf field {number} should be an integer")
    return _signed64(value)


def _bytes_field(fields: dict[int, list], number: int) -> bytes:
    value = _last(fields, number, b"")
    if not isinstance(value, bytes):
        raise CheckpointError(f"protobuf field {number} should be length-delimited")
    return value


def parse_shape(buf: bytes) -> tuple[int, ...]:
    """``TensorShapeProto``: repeated Dim dim = 2 (Dim: int64 size = 1); bool unknown_rank = 3."""
    fields = parse_message(buf)
    if _int_field(fields, 3):
        raise CheckpointError("tensor shape has unknown rank")
    dims = []
    for dim in fields.get(2, []):
        if not isinstance(dim, bytes):
            raise CheckpointError("tensor shape dimension should be a message")
        size = _int_field(parse_message(dim), 1)
        if size < 0:
            raise CheckpointError(f"tensor shape has a negative dimension ({size})")
        dims.append(size)
    return tuple(dims)


def parse_header(buf: bytes) -> tuple[int, str]:
    """``BundleHeaderProto``: int32 num_shards = 1; Endianness endianness = 2 → (shards, "<" or ">")."""
    fields = parse_message(buf)
    shards, endianness = _int_field(fields, 1), _int_field(fields, 2)
    if shards < 1:
        raise CheckpointError(f"bundle header says {shards} shards")
    if endianness not in (0, 1):
        raise CheckpointError(f"bundle header has unknown endianness {endianness}")
    return shards, "<" if endianness == 0 else ">"


def parse_entry(name: str, buf: bytes, num_shards: int) -> TensorInfo:
    """``BundleEntryProto``: dtype = 1, shape = 2, shard_id = 3, offset = 4, size = 5, fixed32 crc32c = 6,
    repeated slices = 7 (partitioned variables, not supported)."""
    fields = parse_message(buf)
    code = _int_field(fields, 1)
    if code not in DTYPES:
        raise CheckpointError(f"unsupported TensorFlow dtype enum {code}")
    if fields.get(7):
        raise CheckpointError("partitioned (sliced) variables are not supported")
    info = TensorInfo(
        name=name,
        dtype=DTYPES[code][0],
        shape=parse_shape(_bytes_field(fields, 2)),
        shard_id=_int_field(fields, 3),
        offset=_int_field(fields, 4),
        size=_int_field(fields, 5),
        crc32c=_int_field(fields, 6),
    )
    _check_entry(info, num_shards)
    return info


def _check_entry(info: TensorInfo, num_shards: int) -> None:
    if not 0 <= info.shard_id < num_shards:
        raise CheckpointError(f"shard id {info.shard_id} is outside 0..{num_shards - 1}")
    if info.offset < 0 or info.size < 0:
        raise CheckpointError(f"negative offset ({info.offset}) or size ({info.size})")
    if info.dtype == "string":
        if info.numel and info.size < info.numel + 4:  # at least a 1-byte length each + the length CRC
            raise CheckpointError(f"size {info.size} bytes is too small for {info.numel} strings")
    else:
        expected = info.numel * np.dtype(DTYPES_BY_NAME[info.dtype]).itemsize
        if info.size != expected:
            raise CheckpointError(
                f"size {info.size} bytes does not match dtype {info.dtype} and shape {list(info.shape)} "
                f"({expected} bytes)"
            )


DTYPES_BY_NAME = {name: np_dtype for name, np_dtype in DTYPES.values()}


# --- SSTable -----------------------------------------------------------------------------------------


def _block_handle(buf: bytes, pos: int, limit: int | None = None) -> tuple[tuple[int, int], int]:
    offset, pos = read_varint(buf, pos, limit)
    size, pos = read_varint(buf, pos, limit)
    return (offset, size), pos


def read_footer(data: bytes) -> tuple[tuple[int, int], tuple[int, int]]:
    """The (metaindex, index) block handles from the 48-byte footer, after checking its magic number."""
    if len(data) < FOOTER_SIZE:
        raise CheckpointError(f"file is {len(data)} bytes, shorter than the {FOOTER_SIZE}-byte table footer")
    footer = data[-FOOTER_SIZE:]
    if struct.unpack("<Q", footer[-8:])[0] != TABLE_MAGIC:
        raise CheckpointError("bad table magic number (not a TensorFlow checkpoint index, or truncated)")
    metaindex, pos = _block_handle(footer, 0, 40)
    index, _ = _block_handle(footer, pos, 40)
    return metaindex, index


def read_block(data: bytes, handle: tuple[int, int], end: int) -> bytes:
    """Contents of one table block, after checking its trailer's type byte and masked CRC32C."""
    offset, size = handle
    if offset + size + BLOCK_TRAILER_SIZE > end:
        raise CheckpointError(f"block at offset {offset} (size {size}) runs past the end of the table")
    contents = data[offset : offset + size + 1]  # block + its compression-type byte
    stored = struct.unpack("<I", data[offset + size + 1 : offset + size + 5])[0]
    if crc32c(contents) != unmask_crc(stored):
        raise CheckpointError(f"checksum mismatch in the table block at offset {offset}")
    if contents[-1] != 0:
        raise CheckpointError(
            f"table block at offset {offset} is compressed (type {contents[-1]}); not supported"
        )
    return contents[:-1]


def iter_block(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) entries of a block: prefix-compressed keys, restart points at the end."""
    if len(block) < 4:
        raise CheckpointError("table block shorter than its restart count")
    num_restarts = struct.unpack("<I", block[-4:])[0]
    limit = len(block) - 4 * (num_restarts + 1)
    if num_restarts < 1 or limit < 0:
        raise CheckpointError(f"table block has an invalid restart count ({num_restarts})")
    restarts = set(struct.unpack(f"<{num_restarts}I", block[limit:-4]))
    pos, key = 0, b""
    while pos < limit:
        start = pos
        shared, pos = read_varint(block, pos, limit)
        unshared, pos = read_varint(block, pos, limit)
        value_len, pos = read_varint(block, pos, limit)
        if shared > len(key) or (start in restarts and shared) or pos + unshared + value_len > limit:
            raise CheckpointError(f"malformed table entry at block offset {start}")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + value_len]
        pos += value_len


def iter_table(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of an SSTable held in ``data``, in order, checking that keys strictly increase."""
    _, index_handle = read_footer(data)
    end = len(data) - FOOTER_SIZE
    previous = None
    for _, handle_bytes in iter_block(read_block(data, index_handle, end)):
        handle, used = _block_handle(handle_bytes, 0)
        if used != len(handle_bytes):
            raise CheckpointError("malformed block handle in the table index")
        for key, value in iter_block(read_block(data, handle, end)):
            if previous is not None and key <= previous:
                raise CheckpointError(f"table keys out of order at {key!r}")
            previous = key
            yield key, value


# --- the checkpoint ----------------------------------------------------------------------------------


def checkpoint_prefix(path: str | os.PathLike) -> Path:
    """``PREFIX`` from ``PREFIX``, ``PREFIX.index`` or ``PREFIX.data-…`` (what users tend to pass)."""
    path = Path(path)
    name = path.name
    if name.endswith(".index"):
        return path.with_name(name[: -len(".index")])
    if ".data-" in name:
        return path.with_name(name[: name.index(".data-")])
    return path


def shard_path(prefix: Path, shard_id: int, num_shards: int) -> Path:
    return prefix.with_name(f"{prefix.name}.data-{shard_id:05d}-of-{num_shards:05d}")


class TFCheckpoint:
    """A TensorFlow V2 checkpoint opened for reading: ``names()``, ``info(name)``, ``read(name)``.

    Opening reads and verifies the whole ``.index`` (small); tensor bytes are only touched by ``read``.
    """

    def __init__(self, path: str | os.PathLike):
        self.prefix = checkpoint_prefix(path)
        self.index_path = self.prefix.with_name(self.prefix.name + ".index")
        if not self.index_path.is_file():
            raise CheckpointError(
                f"{self.index_path}: checkpoint index not found; pass the checkpoint prefix "
                "(e.g. model.ckpt) or its .index file"
            )
        self.num_shards, self.byte_order, self.variables = _load_index(self.index_path)

    def names(self) -> list[str]:
        return list(self.variables)

    def __contains__(self, name: str) -> bool:
        return name in self.variables

    def __len__(self) -> int:
        return len(self.variables)

    def info(self, name: str) -> TensorInfo:
        if name not in self.variables:
            raise CheckpointError(f"{self.index_path}: no tensor named {name!r} in this checkpoint")
        return self.variables[name]

    def list_variables(self) -> list[tuple[str, str, tuple[int, ...]]]:
        """(name, dtype, shape) of every tensor, sorted by name (like ``tf.train.list_variables``)."""
        return [(i.name, i.dtype, i.shape) for i in self.variables.values()]

    def shard_path(self, shard_id: int) -> Path:
        return shard_path(self.prefix, shard_id, self.num_shards)

    def read(self, name: str, verify: bool = True) -> np.ndarray:
        """Tensor ``name`` as a read-only numpy array mapped from its shard (bfloat16: uint16 bits).

        ``verify`` checks its masked CRC32C first. Copy the array if it must outlive heavy memory use:
        its pages stay mapped while it (or a view of it) is alive.
        """
        info = self.info(name)
        path = self.shard_path(info.shard_id)
        try:
            raw = _map_bytes(path, info)
            if info.dtype == "string":
                return _decode_strings(raw, info, self.byte_order, verify)
            if verify and crc32c(raw) != unmask_crc(info.crc32c):
                raise CheckpointError(CRC_HINT)
            return _as_array(raw, info, self.byte_order)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: tensor {name!r}: {e}") from None

    def items(self, verify: bool = True) -> Iterator[tuple[str, np.ndarray]]:
        for name in self.variables:
            yield name, self.read(name, verify)


def _load_index(index_path: Path) -> tuple[int, str, dict[str, TensorInfo]]:
    data = index_path.read_bytes()
    name = None
    try:
        entries = iter_table(data)
        key, value = next(entries, (None, None))
        if key != HEADER_KEY:
            raise CheckpointError("the first entry is not the bundle header")
        num_shards, byte_order = parse_header(value)
        variables = {}
        for key, value in entries:
            name = key.decode("utf-8", errors="replace")
            variables[name] = parse_entry(name, value, num_shards)
    except CheckpointError as e:
        where = f"entry {name!r}: " if name is not None else ""
        raise CheckpointError(
            f"{index_path}: corrupted checkpoint index: {where}{e}; fetch the .index file again"
        ) from None
    return num_shards, byte_order, variables


def _map_bytes(path: Path, info: TensorInfo):
    """A read-only buffer over the tensor's ``size`` bytes of ``path``, memory-mapped."""
    if not path.is_file():
        raise CheckpointError(
            "data shard file is missing; every .data-NNNNN-of-MMMMM file must sit beside the .index"
        )
    file_size = path.stat().st_size
    if info.offset + info.size > file_size:
        raise CheckpointError(
            f"data shard is truncated: the tensor needs bytes {info.offset}..{info.offset + info.size} "
            f"but the file has {file_size} bytes; the download is incomplete, fetch the file again"
        )
    if info.size == 0:
        return b""
    start = info.offset - info.offset % mmap.ALLOCATIONGRANULARITY
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), info.offset + info.size - start, offset=start, access=mmap.ACCESS_READ)
    return memoryview(mapped)[info.offset - start :]


def _as_array(raw, info: TensorInfo, byte_order: str) -> np.ndarray:
    dtype = np.dtype(DTYPES_BY_NAME[info.dtype]).newbyteorder(byte_order)
    array = np.frombuffer(raw, dtype=dtype, count=info.numel).reshape(info.shape)
    if info.dtype == "bool" and array.view(np.uint8).max(initial=0) > 1:
        raise CheckpointError("bool tensor holds bytes other than 0 and 1")
    return array


def _decode_strings(raw, info: TensorInfo, byte_order: str, verify: bool) -> np.ndarray:
    """String tensors: varint64 lengths, a masked CRC of the lengths (as uint32), then the bytes; the
    entry's CRC covers the lengths (as uint32), that length checksum, and the bytes."""
    buf = bytes(raw)
    lengths, pos, crc = [], 0, 0
    for _ in range(info.numel):
        length, pos = read_varint(buf, pos)
        fmt = "I" if length <= 0xFFFFFFFF else "Q"
        crc = google_crc32c.extend(crc, struct.pack(byte_order + fmt, length))
        lengths.append(length)
    if pos + 4 > len(buf) or unmask_crc(struct.unpack(byte_order + "I", buf[pos : pos + 4])[0]) != crc:
        raise CheckpointError("string lengths checksum mismatch")
    crc = crc32c(buf[pos : pos + 4], crc)
    pos += 4
    if verify and crc32c(buf[pos:], crc) != unmask_crc(info.crc32c):
        raise CheckpointError(CRC_HINT)
    out = np.empty(info.numel, dtype=object)
    for i, length in enumerate(lengths):
        if pos + length > len(buf):
            raise CheckpointError("string bytes run past the tensor's size")
        out[i], pos = buf[pos : pos + length], pos + length
    return out.reshape(info.shape)


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """Exact float32 values of bfloat16 raw bits (a ``uint16`` array, as :meth:`TFCheckpoint.read` gives)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def open_checkpoint(path: str | os.PathLike) -> TFCheckpoint:
    """Open the TensorFlow checkpoint at ``path`` (its prefix, ``.index`` or a data shard)."""
    return TFCheckpoint(path)
