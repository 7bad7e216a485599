"""Streaming create-pretraining-data (issue 27): chunks, inputs of every kind, --output_dir parts, resume, processes."""

from __future__ import annotations

import bz2
import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest

from bertkit.data.loader import PretrainingLoader
from bertkit.data.records import read_tfrecord
from bertkit.tasks.pretrain import data as P
from bertkit.tasks.pretrain import parts
from bertkit.tasks.pretrain.corpus import input_files, read_chunks, read_lines
from bertkit.tasks.pretrain.data import CreatePretrainingDataConfig, create_pretraining_data

WORDS = "the a of and to in city river music film century king war transformers bidirectional".split()


def documents(n: int = 30, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    return [
        [" ".join(rng.choices(WORDS, k=rng.randint(3, 20))).capitalize() + "." for _ in range(rng.randint(1, 8))]
        for _ in range(n)
    ]


def google_text(docs: list[list[str]]) -> str:
    return "\n\n".join("\n".join(d) for d in docs) + "\n"


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(google_text(documents()), encoding="utf-8")
    return path


def make(inputs, out: Path, **flags) -> dict:
    flags = {"max_seq_length": 32, "max_predictions_per_seq": 5, "dupe_factor": 2} | flags
    key = "output_dir" if "output_file" not in flags else "unused"
    flags.setdefault(key, str(out))
    flags.pop("unused", None)
    return create_pretraining_data(CreatePretrainingDataConfig.from_flags(input_file=str(inputs), **flags))


def records(path: Path) -> list[bytes]:
    """Every record of a file or of an --output_dir's parts in part order, serialized (for exact comparison)."""
    from bertkit.data.records import _frames

    files = [path] if path.is_file() else sorted(path.glob("part-*"), key=lambda p: int(p.name[5:]))
    return [data for f in files for _, _, data in _frames(f, "tfrecord")]


# --- chunks ---------------------------------------------------------------------------------------------------


def test_chunks_are_whole_documents_and_cover_the_text(text):
    lines = [line for line, _, _ in read_lines([text])]
    chunks = list(read_chunks([text], 0.0005))  # ~500 bytes
    assert len(chunks) > 5 and [c.index for c in chunks] == list(range(len(chunks)))
    assert [line for c in chunks for line in c.lines] == lines
    for c in chunks[1:]:
        assert not c.lines[0].strip()  # cut at a blank line: a document boundary
    assert len(list(read_chunks([text], 0))) == 1


def test_one_chunk_is_googles_run_and_chunking_changes_only_negatives(text, tmp_path):
    """One chunk: the records of Google's algorithm with --random_seed (the golden tests check it against Google's
    files); small chunks: as many instances give or take, each chunk seeded on its own."""
    one = make(text, tmp_path / "one.tfrecord", output_file=str(tmp_path / "one.tfrecord"), chunk_size_mb=0)
    tok = P.make_tokenizer(CreatePretrainingDataConfig.from_flags(input_file="x", output_file="y"))
    cfg = CreatePretrainingDataConfig.from_flags(input_file="x", output_file="y", max_seq_length=32, max_predictions_per_seq=5,
                                      dupe_factor=2)  # fmt: skip
    want = P.make_features(P.read_documents([text], tok), cfg, tok)
    got = list(read_tfrecord(tmp_path / "one.tfrecord"))
    assert len(got) == one["instances"] == len(want["input_ids"])
    assert all(np.array_equal(g["input_ids"], w) for g, w in zip(got, want["input_ids"], strict=True))
    many = make(text, tmp_path / "many", chunk_size_mb=0.001)
    assert many["chunks"] > 3 and abs(many["instances"] - one["instances"]) < 0.2 * one["instances"]
    assert many["documents"] == one["documents"]


# --- --output_dir: parts, manifest, resume --------------------------------------------------------------------


def test_output_dir_parts_load_for_training(text, tmp_path):
    """--output_dir in every format: the loader reads the parts as they are, the same samples in part order."""
    loaded = {}
    for fmt in ("tfrecord", "ofrecord", "shards"):
        s = make(text, tmp_path / fmt, output_format=fmt, chunk_size_mb=0.001)
        assert s["complete"] and (tmp_path / fmt / "manifest.json").is_file()
        loaded[fmt] = PretrainingLoader(tmp_path / fmt, 4, 32, 5, shuffle=False, cache_dir=tmp_path / "cache").arrays
    for fmt in ("ofrecord", "shards"):
        for name, a in loaded["tfrecord"].items():
            np.testing.assert_array_equal(np.asarray(loaded[fmt][name]), np.asarray(a), err_msg=f"{fmt} {name}")
    # The record parts were converted into the cache, one directory each; the shard parts are memory-mapped where
    # they are.
    n = len(list((tmp_path / "tfrecord").glob("part-*")))
    assert len([p for p in (tmp_path / "cache").glob("shards-*") if p.is_dir()]) == 2 * n
    shards = PretrainingLoader(tmp_path / "shards", 4, 32, 5, seed=3)
    idx = shards.order(0)[:7]
    np.testing.assert_array_equal(shards.arrays["input_ids"][idx], np.asarray(loaded["shards"]["input_ids"])[idx])


class Killed(BaseException):
    """Not an Exception: like a kill, no handler of the command's runs for it."""


def test_a_crashed_run_resumes_without_redoing_finished_chunks(text, tmp_path, monkeypatch):
    flags = {"chunk_size_mb": 0.001}
    whole = make(text, tmp_path / "whole", **flags)
    real, calls, crash = P.make_chunk, [], [True]

    def crash_at_4(chunk):
        calls.append(chunk.index)
        if chunk.index == 4 and crash[0]:
            raise Killed  # as a kill: nothing after it runs
        return real(chunk)

    monkeypatch.setattr(P, "make_chunk", crash_at_4)
    with pytest.raises(Killed):
        make(text, tmp_path / "resumed", **flags)
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    calls.clear()
    crash[0] = False
    make(text, tmp_path / "resumed", **flags)
    assert calls == list(range(4, whole["corpus_chunks"]))  # chunks 0-3 were finished: not made again
    assert records(tmp_path / "resumed") == records(tmp_path / "whole")
    # A temporary left by a killed writer is cleared; other settings are refused, naming what differs.
    (tmp_path / "resumed" / f".part-9.tmp-{parts.os.uname().nodename}-999999").write_text("x")
    with pytest.raises(ValueError, match="dupe_factor differ"):
        make(text, tmp_path / "resumed", dupe_factor=3, **flags)
    assert not list((tmp_path / "resumed").glob(".part-*"))


def test_processes_share_the_chunks(monkeypatch):
    assert parts.resolve_shard(0, 0, {}) == (0, 1)
    assert parts.resolve_shard(0, 0, {"RANK": "3", "WORLD_SIZE": "4"}) == (3, 4)
    assert parts.resolve_shard(0, 0, {"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}) == (1, 2)
    assert parts.resolve_shard(2, 5, {"RANK": "3", "WORLD_SIZE": "4"}) == (2, 5)  # the flags win
    with pytest.raises(ValueError, match="RANK/WORLD_SIZE"):
        parts.resolve_shard(0, 0, {"RANK": "4", "WORLD_SIZE": "4"})
    assert parts.chunk_seed(12345, 0) == 12345 and parts.chunk_seed(12345, 1) != parts.chunk_seed(12345, 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="2 processes share the chunks .*pass --output_dir"):
        create_pretraining_data(
            CreatePretrainingDataConfig.from_flags(input_file=__file__, output_file="never-written")
        )
    assert not Path("never-written").exists()


def test_progress_is_plain_lines_in_a_log(text, tmp_path, capsys):
    create_pretraining_data(
        CreatePretrainingDataConfig.from_flags(input_file=str(text), output_dir=str(tmp_path / "o"), chunk_size_mb=0.002,
                                    dupe_factor=1, max_seq_length=32),
        progress=True,
    )  # fmt: skip
    err = capsys.readouterr().err.splitlines()
    assert len(err) > 2 and all(line.startswith("chunk ") and "MiB/s" in line for line in err)


# --- inputs ---------------------------------------------------------------------------------------------------


def test_compressed_text_gives_the_same_records(text, tmp_path):
    raw = text.read_bytes()
    (tmp_path / "c.txt.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "c.txt.bz2").write_bytes(bz2.compress(raw))
    paths = ["c.txt.gz", "c.txt.bz2"]
    zstandard = pytest.importorskip("zstandard")
    (tmp_path / "c.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    paths.append("c.txt.zst")
    make(text, tmp_path / "plain", output_format="tfrecord")
    for name in paths:
        make(tmp_path / name, tmp_path / f"out-{name}")
        assert records(tmp_path / f"out-{name}") == records(tmp_path / "plain"), name


def test_json_lines_and_parquet_are_documents(tmp_path):
    pytest.importorskip("blingfire")
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    texts = ["The cat sat on the mat. It ran away! Did it come back?\nA new paragraph starts here.",
             *(" ".join(d) for d in documents(11))]  # fmt: skip
    with gzip.open(tmp_path / "wiki.jsonl.gz", "wt", encoding="utf-8") as fh:
        for i, t in enumerate(texts):
            fh.write(json.dumps({"id": i, "body": t}) + "\n")
    pq.write_table(pa.table({"id": list(range(len(texts))), "body": texts}), tmp_path / "wiki.parquet")
    lines = [line for line, _, _ in read_lines([tmp_path / "wiki.parquet"], "body")]
    # One sentence a line, a blank line after each document (paragraphs are cut at newlines first).
    assert lines[:6] == ["The cat sat on the mat.", "It ran away!", "Did it come back?", "A new paragraph starts here.",
                         "", lines[5]]  # fmt: skip
    assert sum(1 for line in lines if not line) == 12
    assert [line for line, _, _ in read_lines([tmp_path / "wiki.jsonl.gz"], "body")] == lines
    for name in ("wiki.jsonl.gz", "wiki.parquet"):
        s = make(tmp_path / name, tmp_path / f"out-{name}", text_field="body")
        assert s["documents"] == 12 and s["instances"] > 0


def test_bad_inputs_name_the_file_and_row(tmp_path, monkeypatch):
    pytest.importorskip("blingfire")
    (tmp_path / "a.jsonl").write_text('{"text": "Fine."}\n{"text": 3}\n')
    (tmp_path / "b.jsonl").write_text('{"text": "Fine."}\n\n{oops\n')
    (tmp_path / "c.txt").write_bytes(b"good\nbad \xff\n")
    (tmp_path / "d.txt.gz").write_bytes(gzip.compress(b"cut short\n" * 100)[:30])
    cases = {"a.jsonl": "a.jsonl: row 2: field 'text' is a int", "b.jsonl": "b.jsonl: line 3: not a JSON",
             "c.txt": "c.txt: line 2: not UTF-8", "d.txt.gz": "d.txt.gz: cannot read"}  # fmt: skip
    for name, message in cases.items():
        with pytest.raises(ValueError, match=message):
            list(read_lines(input_files(str(tmp_path / name))))
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "e.parquet")
    with pytest.raises(ValueError, match="e.parquet: no column 'text' .*body.*--text_field"):
        list(read_lines([tmp_path / "e.parquet"]))
    # Without the optional packages: which extra to install.
    import builtins

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda n, *a, **k: (_ for _ in ()).throw(ImportError(n))
                        if n in ("pyarrow", "blingfire") else real_import(n, *a, **k))  # fmt: skip
    with pytest.raises(ValueError, match=r"pip install 'bertkit\[corpus\]'"):
        list(read_lines([tmp_path / "e.parquet"]))


def test_kill_9_then_rerun_equals_a_straight_run(text, tmp_path):
    """A real SIGKILL of the command mid-way: the rerun makes only the unfinished chunks, and the parts are those of
    an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    big = tmp_path / "big.txt"
    big.write_text(text.read_text(encoding="utf-8") * 6, encoding="utf-8")
    flags = {"chunk_size_mb": 0.002, "dupe_factor": 5}
    straight = make(big, tmp_path / "straight", **flags)
    out = tmp_path / "killed"
    argv = [sys.executable, "-m", "bertkit", "create-pretraining-data", f"--input_file={big}", f"--output_dir={out}",
            "--max_seq_length=32", "--max_predictions_per_seq=5", *(f"--{k}={v}" for k, v in flags.items())]  # fmt: skip
    proc = subprocess.Popen(argv, env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    while len(list(out.glob("manifest/chunk-*.json"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(out.glob("manifest/chunk-*.json")))
    assert 3 <= done < straight["corpus_chunks"], "killed too late to test anything: make the input bigger"
    resumed = make(big, out, **flags)
    assert resumed["chunks"] == straight["corpus_chunks"] - done  # only the unfinished chunks were made
    assert records(out) == records(tmp_path / "straight")
    assert not [p for p in out.rglob(".*") if ".tmp-" in p.name]  # the killed writer's temporaries are gone
