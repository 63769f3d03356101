"""The TensorFlow checkpoint reader, on checkpoints written by real TensorFlow (scripts/make_tf_fixtures.py)."""

from __future__ import annotations

import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt2scratch.conversion.tf_bundle import (
    FOOTER_SIZE,
    CheckpointError,
    TFCheckpoint,
    bfloat16_to_float32,
    crc32c,
    iter_block,
    mask_crc,
    read_block,
    read_footer,
    read_varint,
    unmask_crc,
)

FIXTURES = Path(__file__).parent / "fixtures" / "tf"
DTYPES_DIR = FIXTURES / "dtypes"
EXPECTED_DTYPES = {
    "float32", "float64", "float16", "bfloat16", "int8", "uint8", "int16", "uint16", "int32", "int64",
    "uint32", "uint64", "bool", "complex64", "string",
}  # fmt: skip


def expected_values() -> dict[str, np.ndarray]:
    with np.load(DTYPES_DIR / "expected.npz") as z:
        return {k.replace("__", "/"): z[k] for k in z.files}


EXPECTED = expected_values()


def assert_same(name: str, got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape, name
    if want.dtype.kind == "S":
        assert got.dtype == object and [bytes(x) for x in got.ravel()] == list(want.ravel()), name
    else:
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)


def copy_fixture(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def flip_byte(path: Path, offset: int, mask: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


# --- reading what TensorFlow wrote -------------------------------------------------------------------


def test_every_dtype_reads_exactly_as_tensorflow_wrote_it():
    ckpt = TFCheckpoint(DTYPES_DIR / "dtypes.ckpt")
    listed = {name: (dtype, shape) for name, dtype, shape in ckpt.list_variables()}
    assert set(listed) == set(EXPECTED)
    assert {dtype for dtype, _ in listed.values()} >= EXPECTED_DTYPES
    for name, want in EXPECTED.items():
        assert listed[name][1] == want.shape
        assert_same(name, ckpt.read(name), want)


def test_bfloat16_bits_widen_exactly():
    ckpt = TFCheckpoint(DTYPES_DIR / "dtypes.ckpt")
    assert ckpt.info("bfloat16").dtype == "bfloat16"
    bits = ckpt.read("bfloat16")
    assert bits.dtype == np.uint16
    via_torch = torch.from_numpy(bits.copy()).view(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(bfloat16_to_float32(bits), via_torch)
    assert np.abs(via_torch).max() > 1  # real values, not zeros


def test_prefix_index_and_data_paths_all_open_the_same_checkpoint():
    names = TFCheckpoint(DTYPES_DIR / "dtypes.ckpt").names()
    assert TFCheckpoint(DTYPES_DIR / "dtypes.ckpt.index").names() == names
    assert TFCheckpoint(DTYPES_DIR / "dtypes.ckpt.data-00000-of-00001").names() == names
    assert names == sorted(names)


def test_sharded_checkpoint_spreads_tensors_over_three_shards():
    ckpt = TFCheckpoint(FIXTURES / "gpt2_sharded" / "model.ckpt")
    assert ckpt.num_shards == 3
    assert {ckpt.info(n).shard_id for n in ckpt.names()} == {0, 1, 2}
    for shard in range(3):
        assert ckpt.shard_path(shard).name == f"model.ckpt.data-{shard:05d}-of-00003"
    total = sum(a.nbytes for _, a in ckpt.items())
    assert total == sum(ckpt.shard_path(i).stat().st_size for i in range(3))


def test_reads_are_lazy_memory_mapped_views(tmp_path):
    folder = copy_fixture(FIXTURES / "gpt2_a", tmp_path / "a")
    ckpt = TFCheckpoint(folder / "model.ckpt")
    wte = ckpt.read("model/wte")
    assert not wte.flags.writeable and not wte.flags.owndata  # a view over the mapping, not a copy
    info = ckpt.info("model/h0/ln_1/g")
    flip_byte(ckpt.shard_path(0), info.offset + 2)  # corrupt one tensor after opening
    np.testing.assert_array_equal(
        ckpt.read("model/h1/ln_1/g"), TFCheckpoint(FIXTURES / "gpt2_a/model.ckpt").read("model/h1/ln_1/g")
    )
    with pytest.raises(CheckpointError, match="model/h0/ln_1/g"):
        ckpt.read("model/h0/ln_1/g")
    ckpt.shard_path(0).unlink()  # listing needs only the index
    assert len(ckpt.list_variables()) == 28
    with pytest.raises(CheckpointError, match=r"data-00000-of-00001.*missing"):
        ckpt.read("model/wpe")


# --- errors ------------------------------------------------------------------------------------------


def test_flipped_data_byte_is_a_crc_error_naming_file_and_tensor(tmp_path):
    folder = copy_fixture(DTYPES_DIR, tmp_path / "d")
    ckpt = TFCheckpoint(folder / "dtypes.ckpt")
    info = ckpt.info("int64")
    flip_byte(ckpt.shard_path(0), info.offset + info.size - 1, 0x80)
    with pytest.raises(CheckpointError) as e:
        ckpt.read("int64")
    assert "dtypes.ckpt.data-00000-of-00001" in str(e.value) and "'int64'" in str(e.value)
    assert "CRC32C" in str(e.value)
    assert ckpt.read("int64", verify=False)[-1] != EXPECTED["int64"][-1]  # verify=False really skips it


def test_truncated_data_shard(tmp_path):
    folder = copy_fixture(DTYPES_DIR, tmp_path / "d")
    ckpt = TFCheckpoint(folder / "dtypes.ckpt")
    last = max(ckpt.variables.values(), key=lambda i: i.offset + i.size)
    with open(ckpt.shard_path(0), "r+b") as f:
        f.truncate(last.offset + 1)
    with pytest.raises(CheckpointError) as e:
        ckpt.read(last.name)
    assert repr(last.name) in str(e.value) and "truncated" in str(e.value)


def test_missing_index(tmp_path):
    with pytest.raises(CheckpointError, match=r"nothere\.ckpt\.index.*not found"):
        TFCheckpoint(tmp_path / "nothere.ckpt")


@pytest.mark.parametrize("where", ["footer magic", "index block", "data block", "empty"])
def test_corrupted_index(tmp_path, where):
    folder = copy_fixture(DTYPES_DIR, tmp_path / "d")
    index = folder / "dtypes.ckpt.index"
    size = index.stat().st_size
    if where == "footer magic":
        flip_byte(index, size - 3)
    elif where == "index block":
        _, (offset, _) = read_footer(index.read_bytes())
        flip_byte(index, offset + 1)
    elif where == "data block":
        flip_byte(index, 20)
    else:
        index.write_bytes(b"")
    with pytest.raises(CheckpointError) as e:
        TFCheckpoint(folder / "dtypes.ckpt")
    assert str(index) in str(e.value)


def test_crc_masking_matches_leveldb():
    # LevelDB's crc32c_test: Mask(crc) != crc, Unmask(Mask(crc)) == crc, and a known CRC32C value.
    assert crc32c(b"123456789") == 0xE3069283
    for crc in (0, 1, 0xE3069283, 0xFFFFFFFF):
        assert unmask_crc(mask_crc(crc)) == crc
        assert mask_crc(crc) != crc


# --- fuzzing -----------------------------------------------------------------------------------------


def read_all(prefix: Path) -> dict[str, np.ndarray]:
    ckpt = TFCheckpoint(prefix)
    return {name: np.array(ckpt.read(name)) for name in ckpt.names()}


def block_spans(index: bytes) -> list[tuple[int, int]]:
    """(offset, size) of the index block and every data block of a table."""
    _, handle = read_footer(index)
    spans = [handle]
    for _, value in iter_block(read_block(index, handle, len(index) - FOOTER_SIZE)):
        offset, pos = read_varint(value, 0)
        spans.append((offset, read_varint(value, pos)[0]))
    return spans


def repair_crcs(index: bytearray) -> None:
    """Recompute every block trailer's CRC, so a corruption inside a block reaches the parser."""
    for offset, size in SPANS:
        if offset + size + 5 <= len(index):
            crc = mask_crc(crc32c(bytes(index[offset : offset + size + 1])))
            index[offset + size + 1 : offset + size + 5] = struct.pack("<I", crc)


INDEX_BYTES = (DTYPES_DIR / "dtypes.ckpt.index").read_bytes()
DATA_BYTES = (DTYPES_DIR / "dtypes.ckpt.data-00000-of-00001").read_bytes()
SPANS = block_spans(INDEX_BYTES)

corruption = st.one_of(
    st.tuples(
        st.just("flip"), st.sampled_from(["index", "data"]), st.integers(0, 10**6), st.integers(1, 255)
    ),
    st.tuples(st.just("truncate"), st.sampled_from(["index", "data"]), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("flip+crc"), st.just("index"), st.integers(0, 10**6), st.integers(1, 255)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corruption)
def test_random_corruption_gives_clean_error_or_correct_read(op):
    kind, target, position, mask = op
    index, data = bytearray(INDEX_BYTES), bytearray(DATA_BYTES)
    buf = index if target == "index" else data
    position %= len(buf)
    if kind == "truncate":
        del buf[position:]
    else:
        buf[position] ^= mask
    if kind == "flip+crc":
        repair_crcs(index)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "dtypes.ckpt"
        Path(f"{prefix}.index").write_bytes(bytes(index))
        Path(f"{prefix}.data-00000-of-00001").write_bytes(bytes(data))
        try:
            got = read_all(prefix)
        except CheckpointError as e:
            assert tmp in str(e)  # names the file
            return
    if kind == "flip+crc":
        return  # a repaired block can rename or retype a tensor undetectably; only a clean error is owed
    assert set(got) == set(EXPECTED)
    for name, want in EXPECTED.items():
        assert_same(name, got[name], want)
