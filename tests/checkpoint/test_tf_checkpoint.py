"""The pure-Python TF V2 checkpoint reader: against TensorFlow's own reader, and against every way a file goes bad.

Besides the checkpoint TensorFlow wrote (../shared/data/tf-checkpoint-tiny), tests build bundles with a small
writer below (LevelDB table format, small blocks so keys are prefix-compressed across several blocks), to cover
dtypes, shards and corruptions that file does not have.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct

import numpy as np
import pytest
import torch

from bertkit.checkpoint.formats import load_state
from bertkit.checkpoint.tf_bundle import CheckpointError, TFCheckpoint, crc32c, resolve_prefix, unmask_crc

DT = {torch.float32: 1, torch.int32: 3, torch.int64: 9, torch.bfloat16: 14, torch.float16: 19}


# --- a minimal bundle writer (test only) ------------------------------------------------------------------


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def pb(number: int, value: int | bytes) -> bytes:
    if isinstance(value, bytes):
        return varint(number << 3 | 2) + varint(len(value)) + value
    return varint(number << 3) + varint(value)


def mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def block(items: list[tuple[bytes, bytes]], restart_every: int = 2) -> bytes:
    buf, restarts, prev = bytearray(), [], b""
    for i, (key, value) in enumerate(items):
        shared = 0
        if i % restart_every:
            while shared < min(len(prev), len(key)) and prev[shared] == key[shared]:
                shared += 1
        else:
            restarts.append(len(buf))
        buf += varint(shared) + varint(len(key) - shared) + varint(len(value)) + key[shared:] + value
        prev = key
    restarts = restarts or [0]
    return bytes(buf) + b"".join(struct.pack("<I", r) for r in restarts) + struct.pack("<I", len(restarts))


def table(items: list[tuple[bytes, bytes]], per_block: int = 3) -> bytes:
    out, index = bytearray(), []

    def put(data: bytes) -> bytes:
        handle = varint(len(out)) + varint(len(data))
        out.extend(data + b"\0" + struct.pack("<I", mask(crc32c(data + b"\0"))))
        return handle

    for start in range(0, len(items), per_block):
        chunk = items[start : start + per_block]
        index.append((chunk[-1][0], put(block(chunk))))
    meta_handle, index_handle = put(block([])), put(block(index, restart_every=1))
    footer = (meta_handle + index_handle).ljust(40, b"\0") + struct.pack("<Q", 0xDB4775248B80FB57)
    return bytes(out) + footer


def write_bundle(prefix, tensors: dict, shards: int = 1, header_extra: bytes = b"", sliced=(), dtype_enum=None):
    """Write PREFIX.index and PREFIX.data-*: tensors spread round-robin over `shards`."""
    data = [bytearray() for _ in range(shards)]
    entries = []
    for i, (name, t) in enumerate(sorted(tensors.items())):
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        shard = i % shards
        shape = b"".join(pb(2, pb(1, d)) for d in t.shape)
        proto = pb(1, (dtype_enum or {}).get(name, DT[t.dtype])) + pb(2, shape) + pb(3, shard)
        proto += pb(4, len(data[shard])) + pb(5, len(raw)) + varint(6 << 3 | 5) + struct.pack("<I", mask(crc32c(raw)))
        if name in sliced:
            proto += pb(7, pb(1, pb(1, 0)))  # one TensorSliceProto
        entries.append((name.encode(), proto))
        data[shard] += raw
    header = pb(1, shards) + pb(3, pb(1, 1)) + header_extra
    (prefix.parent / f"{prefix.name}.index").write_bytes(table([(b"", header), *entries]))
    for k, d in enumerate(data):
        (prefix.parent / f"{prefix.name}.data-{k:05d}-of-{shards:05d}").write_bytes(bytes(d))
    return prefix


# --- crc32c -----------------------------------------------------------------------------------------------


def test_crc32c_known_values():
    # RFC 3720 (iSCSI) appendix B.4 test vectors, and the standard check value.
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    data = bytearray(np.random.default_rng(0).integers(0, 256, 9_000_001, dtype=np.uint8).tobytes())
    assert crc32c(data) == crc32c(bytes(data))  # bytearrays, and inputs longer than one 4 MiB chunk


def test_unmask_inverts_leveldb_mask():
    for crc in (0, 1, 0xE3069283, 0xFFFFFFFF):
        assert unmask_crc(mask(crc)) == crc


# --- reading ------------------------------------------------------------------------------------------------


def test_every_dtype_shape_and_shard_reads_back_exactly(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "a/float32": torch.randn(5, 7, generator=g),
        "a/float16": torch.randn(3, 4, generator=g).half(),
        "a/bfloat16": torch.randn(6, generator=g).bfloat16(),
        "b/int32": torch.arange(-5, 7, dtype=torch.int32).reshape(3, 4),
        "b/int64": torch.tensor(2**40 + 3),
        "c/empty": torch.zeros(0, 3),
        **{f"layer_{i}/kernel": torch.randn(2, 3, generator=g) for i in range(7)},
    }
    ckpt = TFCheckpoint(write_bundle(tmp_path / "model.ckpt", tensors, shards=3))
    assert ckpt.num_shards == 3 and set(ckpt) == set(tensors)
    for name, t in tensors.items():
        assert ckpt.shapes[name] == tuple(t.shape)
        got = ckpt[name]
        assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t), name


def test_resolve_prefix_accepts_directory_prefix_and_index_path(tmp_path):
    prefix = write_bundle(tmp_path / "bert_model.ckpt", {"x": torch.zeros(2)})
    assert resolve_prefix(tmp_path) == str(prefix)
    assert resolve_prefix(prefix) == str(prefix)
    assert resolve_prefix(f"{prefix}.index") == str(prefix)
    # The `checkpoint` state file may name the path on the machine that trained it: the file beside it wins.
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "/gone/bert_model.ckpt"\n')
    assert resolve_prefix(tmp_path) == str(prefix)
    with pytest.raises(CheckpointError, match="no TensorFlow checkpoint"):
        resolve_prefix(tmp_path / "nothing")


def test_matches_tensorflows_reader_bit_for_bit(shared_data):
    d = shared_data / "tf-checkpoint-tiny"
    ref = json.loads((d / "tf_reader_variables.json").read_text())
    ckpt = TFCheckpoint(d)
    assert set(ckpt) == set(ref)
    for name, want in ref.items():
        t = ckpt[name]
        assert str(t.dtype).removeprefix("torch.") == want["dtype"], name
        assert list(t.shape) == want["shape"], name
        assert hashlib.sha256(t.numpy().tobytes()).hexdigest() == want["sha256"], name


# --- bad input ----------------------------------------------------------------------------------------------


def _copy(shared_data, tmp_path):
    src = shared_data / "tf-checkpoint-tiny"
    for f in ("bert_model.ckpt.index", "bert_model.ckpt.data-00000-of-00001", "bert_config.json"):
        shutil.copyfile(src / f, tmp_path / f)
    return tmp_path / "bert_model.ckpt"


def test_truncated_data_file_names_the_variable(shared_data, tmp_path):
    prefix = _copy(shared_data, tmp_path)
    data = tmp_path / "bert_model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:-1000])
    # The error names the first variable the cut reaches, with its shape: the last one in the file here.
    with pytest.raises(
        CheckpointError, match=r"truncated.*variable cls/seq_relationship/output_weights \(shape \[2, 128\]"
    ):
        TFCheckpoint(prefix)
    with pytest.raises(CheckpointError, match="truncated"):
        load_state(tmp_path)


def test_flipped_data_byte_fails_the_variables_crc(shared_data, tmp_path):
    prefix = _copy(shared_data, tmp_path)
    entry = TFCheckpoint(prefix).entries["bert/embeddings/word_embeddings"]
    data = bytearray((tmp_path / "bert_model.ckpt.data-00000-of-00001").read_bytes())
    data[entry.offset + 12345] ^= 0x10
    (tmp_path / "bert_model.ckpt.data-00000-of-00001").write_bytes(bytes(data))
    ckpt = TFCheckpoint(prefix)
    assert ckpt["bert/embeddings/position_embeddings"].shape == (512, 128)  # the rest still reads
    with pytest.raises(CheckpointError, match="word_embeddings: crc32c .* corrupt"):
        ckpt["bert/embeddings/word_embeddings"]


@pytest.mark.parametrize("where", [10, -60])
def test_flipped_index_byte_fails_a_block_crc(tmp_path, where):
    prefix = write_bundle(tmp_path / "m.ckpt", {"x": torch.zeros(2), "y": torch.ones(3)})
    index = bytearray((tmp_path / "m.ckpt.index").read_bytes())
    index[where] ^= 0x01
    (tmp_path / "m.ckpt.index").write_bytes(bytes(index))
    with pytest.raises(CheckpointError, match="crc32c check: the index file is corrupt"):
        TFCheckpoint(prefix)


def test_truncated_index(tmp_path):
    prefix = write_bundle(tmp_path / "m.ckpt", {"x": torch.zeros(2)})
    index = tmp_path / "m.ckpt.index"
    index.write_bytes(index.read_bytes()[:-20])
    with pytest.raises(CheckpointError, match="bad magic|truncated"):
        TFCheckpoint(prefix)


def test_sliced_variable_is_refused_by_name(tmp_path):
    prefix = write_bundle(tmp_path / "m.ckpt", {"part": torch.zeros(4), "whole": torch.ones(2)}, sliced={"part"})
    ckpt = TFCheckpoint(prefix)
    assert torch.equal(ckpt["whole"], torch.ones(2))
    with pytest.raises(CheckpointError, match="part is saved in 1 slices .* partitioned"):
        ckpt["part"]


def test_unsupported_dtype_and_big_endian_are_refused(tmp_path):
    prefix = write_bundle(tmp_path / "m.ckpt", {"s": torch.zeros(2)}, dtype_enum={"s": 7})
    with pytest.raises(CheckpointError, match="dtype string"):
        TFCheckpoint(prefix)["s"]
    prefix = write_bundle(tmp_path / "b.ckpt", {"x": torch.zeros(2)}, header_extra=pb(2, 1))
    with pytest.raises(CheckpointError, match="big-endian"):
        TFCheckpoint(prefix)


# --- through load_state: names, training state, missing variables ----------------------------------------------


def _google_names(cfg) -> dict[str, torch.Tensor]:
    """A Google-layout checkpoint for `cfg` (encoder and pooler only), random values."""
    from bertkit.checkpoint.convert import TF_TABLE, foreign_shapes
    from bertkit.checkpoint.formats import expected_shapes

    shapes = foreign_shapes(TF_TABLE, expected_shapes(cfg), cfg.num_hidden_layers)
    g = torch.Generator().manual_seed(1)
    return {n: torch.randn(s, generator=g) for n, s in shapes.items() if n.startswith("bert/")}


def test_adam_slots_skipped_and_global_step_reported(tmp_path, tiny_cfg):
    tensors = _google_names(tiny_cfg)
    tensors |= {f"{n}/adam_m": torch.zeros_like(t) for n, t in tensors.items()}
    tensors |= {"bert/pooler/dense/kernel/adam_v": torch.zeros(32, 32), "global_step": torch.tensor(77)}
    write_bundle(tmp_path / "bert_model.ckpt", tensors)
    tiny_cfg.to_json_file(tmp_path / "bert_config.json")
    state, cfg, fmt, report = load_state(tmp_path)
    assert fmt == "tf" and cfg == tiny_cfg and report.global_step == 77
    assert report.ignored == [] and len(report.skipped) == len(tensors) // 2 + 1
    assert set(report.new) == {"mlm.transform.weight", "mlm.transform.bias", "mlm.norm.weight", "mlm.norm.bias"} | {
        "mlm.bias",
        "nsp.weight",
        "nsp.bias",
    }
    kernel = tensors["bert/encoder/layer_1/intermediate/dense/kernel"]
    assert torch.equal(state["bert.layers.1.mlp.fc1.weight"], kernel.t())  # TF kernels are (in, out)


def test_missing_variable_is_named(tmp_path, tiny_cfg):
    tensors = _google_names(tiny_cfg)
    del tensors["bert/encoder/layer_1/output/dense/kernel"]
    write_bundle(tmp_path / "bert_model.ckpt", tensors)
    with pytest.raises(ValueError, match="lacks bert/encoder/layer_1/output/dense/kernel"):
        load_state(tmp_path, config=tiny_cfg)


def test_shape_disagreeing_with_config_is_named(tmp_path, tiny_cfg):
    write_bundle(tmp_path / "bert_model.ckpt", _google_names(tiny_cfg))
    bigger = type(tiny_cfg)(**{**tiny_cfg.to_dict(), "vocab_size": 100})
    with pytest.raises(ValueError, match=r"word_embeddings: expected shape \[100, 32\] .*found \[99, 32\]"):
        load_state(tmp_path, config=bigger)
    deeper = type(tiny_cfg)(**{**tiny_cfg.to_dict(), "num_hidden_layers": 1})
    with pytest.raises(ValueError, match="layer_1.* num_hidden_layers=1"):
        load_state(tmp_path, config=deeper)
