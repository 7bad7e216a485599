"""Record formats: protobuf bytes as protoc would write them, round trips, packed and unpacked lists, the bulk decoder
against the record-by-record one, every kind of bad input named precisely, and Google's own TFRecord file read and
re-written byte for byte."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertkit.data import records as R

GOLDEN = "google-cpd-sample_text-wwmFalse.tfrecord"  # 118 instances, seq 128, max_pred 20


def synthetic(n: int, T: int = 16, P: int = 4, dtype=np.int64, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Pretraining records with random contents; input_ids[0] is the record's number."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ids = rng.integers(0, 30522, T).astype(dtype)
        ids[0] = i
        out.append(
            {
                "input_ids": ids,
                "input_mask": np.ones(T, dtype),
                "segment_ids": (np.arange(T) >= T // 2).astype(dtype),
                "masked_lm_positions": np.sort(rng.choice(np.arange(1, T), P, replace=False)).astype(dtype),
                "masked_lm_ids": rng.integers(0, 30522, P).astype(dtype),
                "masked_lm_weights": (np.arange(P) < P - 1).astype(np.float32),
                "next_sentence_labels": np.array([i % 2], dtype),
            }
        )
    return out


def assert_records_equal(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert list(g) == list(w)
        for k in w:
            np.testing.assert_array_equal(g[k], w[k], err_msg=k)


def arrays_of(path, spec: dict[str, R.Spec]) -> dict[str, np.ndarray]:
    chunks = list(R.read_arrays(path, spec))
    return {k: np.concatenate([c[k] for c in chunks]) for k in spec}


# --- hand-made protobuf, independent of bertkit's encoder ------------------------------------------------------


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative numbers are sent as their 64-bit two's complement
    out = b""
    while True:
        out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            return out


def ld(field: int, payload: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def entry(name: str, kind: int, list_payload: bytes) -> bytes:
    return ld(1, ld(1, name.encode()) + ld(2, ld(kind, list_payload)))


def test_encoding_matches_protobuf_bytes():
    # Worked by hand from the encoding guide: 300 is the varint ac 02; map entries are {key = 1, value = 2}.
    rec = {"a": np.array([1, 300], np.int32)}
    assert R.serialize_ofrecord(rec) == bytes.fromhex("0a0c 0a0161 1207 2205 0a03 01ac02")
    assert R.serialize_example({"a": np.array([1, 300])}) == bytes.fromhex("0a0e 0a0c 0a0161 1207 1a05 0a03 01ac02")
    np.testing.assert_array_equal(R.parse_ofrecord(R.serialize_ofrecord(rec))["a"], [1, 300])
    assert R.masked_crc32c(b"") == 0xA282EAD8  # crc32c("") is 0, so the mask constant alone


@pytest.mark.parametrize("fmt", ["ofrecord", "tfrecord"])
def test_round_trip(tmp_path, fmt):
    recs = [
        {
            "i64": np.array([0, 1, -1, 127, 128, 2**31, -(2**63), 2**63 - 1], np.int64),
            "f32": np.array([0.5, -1e30, np.inf], np.float32),
            "raw": np.array([b"", b"\x00\xff", "é".encode()], object),
            "empty": np.array([], np.int64),
        },
        {"i64": np.arange(300, dtype=np.int64) * 1000},
    ]
    if fmt == "ofrecord":  # OFRecord also has int32 and double lists
        recs[0]["i32"] = np.array([0, -1, 2**31 - 1, -(2**31), 300], np.int32)
        recs[0]["f64"] = np.array([1 / 3, -0.0], np.float64)
    write, read = (R.write_ofrecord, R.read_ofrecord) if fmt == "ofrecord" else (R.write_tfrecord, R.read_tfrecord)
    assert write(tmp_path / "f", recs) == 2
    got = list(read(tmp_path / "f"))
    assert_records_equal(got, recs)
    assert got[0]["raw"].dtype == object and got[0]["f32"].dtype == np.float32
    if fmt == "ofrecord":
        assert got[0]["i32"].dtype == np.int32 and got[0]["f64"].dtype == np.float64
    assert R.sniff_format(tmp_path / "f") == fmt
    names = ["f", "f.sha256"] if fmt == "ofrecord" else ["f"]  # OFRecord gets a checksum sidecar
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # the temporary file was renamed


def test_unpacked_lists_read_like_packed():
    ints, floats, doubles = [5, 300, -2, 70000], [1.5, -2.25], [1 / 3]
    packed = (
        entry("i32", 4, ld(1, b"".join(varint(v) for v in ints)))
        + entry("f", 2, ld(1, struct.pack("<2f", *floats)))
        + entry("d", 3, ld(1, struct.pack("<d", *doubles)))
    )
    unpacked = (
        entry("i32", 4, b"".join(b"\x08" + varint(v) for v in ints))
        + entry("f", 2, b"".join(b"\x0d" + struct.pack("<f", v) for v in floats))
        + entry("d", 3, b"".join(b"\x09" + struct.pack("<d", v) for v in doubles))
    )
    # Two packed runs of one field concatenate; an unknown field (7) inside a list is skipped.
    split = entry("i32", 4, ld(1, varint(5) + varint(300)) + b"\x38\x01" + ld(1, varint(-2) + varint(70000)))
    for data in (packed, unpacked):
        rec = R.parse_ofrecord(data)
        np.testing.assert_array_equal(rec["i32"], ints)
        assert rec["i32"].dtype == np.int32
        np.testing.assert_array_equal(rec["f"], np.float32(floats))
        np.testing.assert_array_equal(rec["d"], doubles)
    np.testing.assert_array_equal(R.parse_ofrecord(split)["i32"], ints)
    example_unpacked = ld(1, entry("x", 3, b"".join(b"\x08" + varint(v) for v in ints)))
    np.testing.assert_array_equal(R.parse_example(example_unpacked)["x"], ints)


def hand_ofrecord(rec: dict[str, np.ndarray], unpacked: set[str] = frozenset(), tail: bytes = b"") -> bytes:
    """An OFRecord built by hand (int64_list and float_list), some lists unpacked; `tail` is appended to every
    packed integer list, to corrupt it."""
    out = b""
    for name, v in rec.items():
        if v.dtype.kind == "f":
            one = [struct.pack("<f", x) for x in v]
            out += entry(name, 2, b"".join(b"\x0d" + x for x in one) if name in unpacked else ld(1, b"".join(one)))
        else:
            one = [varint(int(x)) for x in v]
            out += entry(
                name, 5, b"".join(b"\x08" + x for x in one) if name in unpacked else ld(1, b"".join(one) + tail)
            )
    return out


def test_bulk_decoding_equals_record_by_record(tmp_path):
    """Datasets decode a chunk of records per numpy call; irregular chunks must fall back and agree."""
    recs = synthetic(6)
    assert hand_ofrecord(recs[0]) == R.serialize_ofrecord(recs[0])
    frames = [R.serialize_ofrecord(r) for r in recs]
    frames[1] = hand_ofrecord(recs[1], unpacked={"input_ids", "masked_lm_weights", "next_sentence_labels"})
    frames[3] = R.serialize_ofrecord({k: v.astype(np.int32) if v.dtype.kind == "i" else v for k, v in recs[3].items()})
    (tmp_path / "part-0").write_bytes(b"".join(struct.pack("<q", len(d)) + d for d in frames))
    spec = R.pretraining_features(16, 4)
    got = arrays_of(tmp_path / "part-0", spec)
    for k in spec:
        np.testing.assert_array_equal(got[k], np.stack([r[k] for r in recs]), err_msg=k)
    # Record 2's lists end in a truncated varint: the run still holds 16 complete values, so only the check that
    # a run ends on a value's last byte keeps the bulk decoder from reading into record 3.
    frames = [R.serialize_ofrecord(r) for r in recs]  # regular but for record 2, so the bulk decoder sees it
    frames[2] = hand_ofrecord(recs[2], tail=b"\x80")
    (tmp_path / "part-0").write_bytes(b"".join(struct.pack("<q", len(d)) + d for d in frames))
    raises(lambda: arrays_of(tmp_path / "part-0", spec), "record 2", "feature 'input_ids'", "truncated varint")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=40))
def test_numpy_varints_equal_reference(values):
    """The vectorised encoder and decoder against the one-value-at-a-time definition above."""
    ref = b"".join(varint(v) for v in values)
    assert R._pack_varints(np.array(values, np.int64)) == ref
    np.testing.assert_array_equal(R._unpack_varints(ref, 0, len(ref)), np.array(values, np.int64))


def test_int32_and_int64_records_read_alike(tmp_path):
    spec = R.pretraining_features(16, 4)
    for dtype in (np.int32, np.int64):
        (tmp_path / dtype.__name__).mkdir()
        R.write_ofrecord(tmp_path / dtype.__name__ / "part-0", synthetic(5, dtype=dtype))
    a = arrays_of(tmp_path / "int32" / "part-0", spec)
    b = arrays_of(tmp_path / "int64" / "part-0", spec)
    for k in spec:
        np.testing.assert_array_equal(a[k], b[k])
        assert a[k].dtype == spec[k].dtype


# --- bad input ------------------------------------------------------------------------------------------------


def offsets(path, fmt) -> list[int]:
    return [offset for _, offset, _ in R._frames(path, fmt, read_data=False)]


def raises(fn, *needles: str) -> R.RecordError | ValueError:
    with pytest.raises(ValueError) as e:
        fn()
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))
    return e.value


@pytest.mark.parametrize("fmt", ["ofrecord", "tfrecord"])
def test_truncated_file(tmp_path, fmt):
    f = tmp_path / "part-0"
    (R.write_ofrecord if fmt == "ofrecord" else R.write_tfrecord)(f, synthetic(3))
    R.checksum_path(f).unlink(missing_ok=True)  # the framing is checked, as in files from other writers
    at = offsets(f, fmt)
    data = f.read_bytes()
    f.write_bytes(data[: at[2] + 20])  # the third record cut short
    err = raises(lambda: list(R._records(f, fmt)), str(f), "record 2", f"byte offset {at[2]}", "truncated")
    assert (err.index, err.offset) == (2, at[2])
    f.write_bytes(data + b"\x01\x02\x03")  # a few stray bytes after the last record
    raises(lambda: list(R._records(f, fmt)), "record 3", f"byte offset {len(data)}", "truncated", "3 of")


def test_length_prefix_past_end(tmp_path):
    f = tmp_path / "part-0"
    R.write_ofrecord(f, synthetic(3))
    R.checksum_path(f).unlink()  # the framing is checked, as in files from other writers
    at = offsets(f, "ofrecord")
    data = bytearray(f.read_bytes())
    data[at[1] : at[1] + 8] = struct.pack("<q", 10**9)
    f.write_bytes(bytes(data))
    raises(lambda: list(R.read_ofrecord(f)), str(f), "record 1", f"{at[1]}", "1000000000")


def test_bad_crcs(tmp_path):
    f = tmp_path / "x.tfrecord"
    R.write_tfrecord(f, synthetic(3))
    at = offsets(f, "tfrecord")
    good = f.read_bytes()
    bad = bytearray(good)
    bad[at[1] + 12 + 5] ^= 1  # one bit of record 1's data
    f.write_bytes(bytes(bad))
    raises(lambda: list(R.read_tfrecord(f)), str(f), "record 1", f"byte offset {at[1]}", "CRC of the record data")
    bad = bytearray(good)
    bad[at[2] + 9] ^= 1  # record 2's length CRC
    f.write_bytes(bytes(bad))
    raises(lambda: list(R.read_tfrecord(f)), "record 2", f"byte offset {at[2]}", "CRC of the length")


def test_protobuf_that_does_not_parse(tmp_path):
    f = tmp_path / "part-0"
    good = R.serialize_ofrecord(synthetic(1)[0])
    garbage = b"\x0f\xff\xff"  # wire type 7 does not exist
    f.write_bytes(b"".join(struct.pack("<q", len(d)) + d for d in (good, garbage)))
    raises(lambda: list(R.read_ofrecord(f)), str(f), "record 1", f"byte offset {8 + len(good)}", "wire type 7")
    bad_list = entry("input_ids", 4, ld(1, b"\x05\x80"))  # a packed varint cut short, inside a named feature
    f.write_bytes(struct.pack("<q", len(bad_list)) + bad_list)
    err = raises(lambda: list(R.read_ofrecord(f)), "record 0", "byte offset 0", "feature 'input_ids'", "truncated")
    assert err.feature == "input_ids"


def test_missing_feature_and_wrong_length(tmp_path):
    recs = synthetic(4)
    del recs[2]["masked_lm_ids"]
    R.write_tfrecord(tmp_path / "a.tfrecord", recs)
    at = offsets(tmp_path / "a.tfrecord", "tfrecord")
    spec = R.pretraining_features(16, 4)
    raises(
        lambda: arrays_of(tmp_path / "a.tfrecord", spec),
        "a.tfrecord",
        "record 2",
        f"byte offset {at[2]}",
        "feature 'masked_lm_ids'",
        "missing",
    )
    R.write_tfrecord(tmp_path / "b.tfrecord", synthetic(2))
    raises(
        lambda: arrays_of(tmp_path / "b.tfrecord", R.pretraining_features(32, 4)),
        "record 0",
        "feature 'input_ids'",
        "has 16 values but --seq_length is 32",
    )
    raises(
        lambda: arrays_of(tmp_path / "b.tfrecord", R.pretraining_features(16, 5)),
        "feature 'masked_lm_positions'",
        "has 4 values but --max_predictions_per_seq is 5",
    )


def test_ofrecord_checksum_sidecar(tmp_path):
    """OFRecord files bertkit writes carry part-N.sha256 (sha256sum's format); a changed byte is refused by name."""
    f = tmp_path / "part-0"
    R.write_ofrecord(f, synthetic(3))
    sidecar = tmp_path / "part-0.sha256"
    assert sidecar.read_text() == f"{hashlib.sha256(f.read_bytes()).hexdigest()}  part-0\n"
    assert R.verify_checksum(f)
    at = offsets(f, "ofrecord")
    good = f.read_bytes()
    bad = bytearray(good)
    bad[at[1] + 8 + 3] ^= 1  # one bit inside record 1's data: it may still parse, so only the sum can tell
    f.write_bytes(bytes(bad))
    for read in (lambda: list(R.read_ofrecord(f)), lambda: arrays_of(f, R.pretraining_features(16, 4))):
        raises(read, str(f), "damaged or changed", "part-0.sha256", "delete")
    sidecar.write_text("not a checksum\n")
    raises(lambda: list(R.read_ofrecord(f)), str(sidecar), "not a sha256 checksum file")
    sidecar.unlink()  # no sidecar (files from other writers): read as they are
    f.write_bytes(good)
    assert not R.verify_checksum(f) and len(list(R.read_ofrecord(f))) == 3
    # Rewriting the file rewrites its sum (the old one never sits beside new data); TFRecord has CRCs, no sidecar.
    sidecar.write_text("0" * 64 + "  part-0\n")
    R.write_ofrecord(f, synthetic(2))
    assert R.verify_checksum(f) and len(list(R.read_ofrecord(f))) == 2
    R.write_tfrecord(tmp_path / "t.tfrecord", synthetic(2))
    assert not R.checksum_path(tmp_path / "t.tfrecord").exists()


def test_wrong_format_says_which_it_is(tmp_path):
    """A TFRecord read as OFRecord and an OFRecord read as TFRecord: the error names the format the file has."""
    of, tf = tmp_path / "part-0", tmp_path / "part-1"
    R.write_ofrecord(of, synthetic(3))
    R.write_tfrecord(tf, synthetic(3))
    spec = R.pretraining_features(16, 4)
    for path, fmt, needle in ((tf, "ofrecord", "this is a TFRecord"), (of, "tfrecord", "this looks like an OFRecord")):
        other = "tfrecord" if fmt == "ofrecord" else "ofrecord"
        raises(lambda p=path, f=fmt: list(R.read_arrays(p, spec, f)), str(path), needle, f"--input_format {other}")
        raises(lambda p=path, f=fmt: R.count_records(p, f), needle)
    raises(lambda: list(R.read_ofrecord(tf)), "this is a TFRecord")  # the record parser's error too
    # A real damaged file gets no such hint.
    data = bytearray(of.read_bytes())
    data[offsets(of, "ofrecord")[1] + 7] = 0x7F  # record 1 says it is ~2^62 bytes long
    of.write_bytes(bytes(data))
    R.checksum_path(of).unlink()
    err = raises(lambda: R.count_records(of, "ofrecord"), "record 1", "truncated")
    assert "TFRecord" not in str(err)


def test_nothing_half_written(tmp_path):
    def records():
        yield from synthetic(2)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        R.write_ofrecord(tmp_path / "part-0", records())
    assert list(tmp_path.iterdir()) == []


# --- Google's files ----------------------------------------------------------------------------------------------


def test_google_tfrecord(shared_data, tmp_path):
    golden = shared_data / "golden" / GOLDEN
    recs = list(R.read_tfrecord(golden))
    assert len(recs) == 118
    spec = R.pretraining_features(128, 20)
    for r in recs:
        assert {k: v.size for k, v in r.items()} == {k: s.length for k, s in spec.items()}
        assert r["input_ids"][0] == 101  # [CLS]
        assert set(np.unique(r["masked_lm_weights"])) <= {0.0, 1.0}
    # Re-encoding gives Google's file byte for byte: same protobuf bytes, same CRCs.
    R.write_tfrecord(tmp_path / "again.tfrecord", recs)
    assert (tmp_path / "again.tfrecord").read_bytes() == golden.read_bytes()
    # The bulk decoder gives what the record-by-record parser gives, in the spec's dtypes.
    arrays = arrays_of(golden, spec)
    for k, s in spec.items():
        assert arrays[k].dtype == s.dtype and arrays[k].shape == (118, s.length)
        np.testing.assert_array_equal(arrays[k], np.stack([r[k] for r in recs]), err_msg=k)
