"""A short hypothesis run of the readers of user files: whatever the bytes, a ValueError naming the file (the CLI's
one line), never another exception, a hang or a giant allocation. Derandomized, so CI is repeatable."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertkit.checkpoint.snapshot import load_snapshot
from bertkit.data.vocab import read_vocab
from bertkit.model.config import BertConfig
from bertkit.tasks.squad.data import load_squad
from bertkit.tasks.squad.evaluate import load_predictions
from bertkit.tasks.squad.predict import RawResults

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip


def npy_header(shape: tuple[int, ...], descr: str) -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}"
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"  # numpy aligns the data to 64 bytes
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()


@FUZZ
@given(weights=st.binary(max_size=300), state=st.binary(max_size=300))
def test_damaged_snapshot_files(tmp_path, weights, state):
    d = tmp_path / "snapshot_1"
    d.mkdir(exist_ok=True)
    BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=8).to_json_file(d / "bert_config.json")  # fmt: skip
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(weights)) + weights)
    (d / "train_state.pt").write_bytes(b"PK\x03\x04" + state)
    with pytest.raises(ValueError, match=str(d)):
        load_snapshot(d)


@FUZZ
@given(
    shape=st.lists(st.integers(0, 2**40), min_size=1, max_size=3).map(tuple),
    descr=st.sampled_from(["<f4", "<i8", "|u1", "[('unique_id', '<i8'), ('start_logits', '<f4', (4,))]"]),
    body=st.binary(max_size=200),
)
def test_all_results_headers(tmp_path, shape, descr, body):
    path = tmp_path / "all_results.npy"
    path.write_bytes(npy_header(shape, descr) + body)
    try:
        RawResults.load(path)
    except ValueError as e:
        assert str(path) in str(e)


@FUZZ
@given(data=st.one_of(st.binary(max_size=200), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12).map(lambda v: json.dumps(v).encode())))  # fmt: skip
def test_squad_and_prediction_files(tmp_path, data):
    path = tmp_path / "file.json"
    path.write_bytes(data)
    for read in (load_squad, load_predictions, read_vocab):
        try:
            read(path)
        except ValueError as e:
            assert str(path) in str(e), (read.__name__, e)


def test_the_fuzzed_readers_accept_good_files(tmp_path):
    path = Path(tmp_path) / "preds.json"
    path.write_text(json.dumps({"q1": "France"}))
    assert load_predictions(path) == {"q1": "France"}
