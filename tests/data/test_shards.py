"""Shard parts read as one data set (ShardSet) and written row block by row block (ShardWriter)."""

from __future__ import annotations

import numpy as np
import pytest

from bertkit.data.shards import ShardWriter, load_shard_set, load_shards, narrow_pretraining, shard_set_sources


def write_parts(root, sizes, seed=0):
    """Shard directories part-<k> of `sizes[k]` rows: 'a' (N, 3) uint16 counting rows, 'w' (N, 2) float32."""
    rng, dirs, start = np.random.default_rng(seed), [], 0
    for k, n in enumerate(sizes):
        w = ShardWriter(root / f"part-{k}")
        for lo in range(0, n, 4):  # several appends per part
            m = min(4, n - lo)
            rows = np.arange(start + lo, start + lo + m, dtype=np.uint16)
            w.append({"a": np.stack([rows, rows, rows], 1), "w": rng.random((m, 2)).astype(np.float32)})
        w.close([(f"text-{k}", "text")])
        dirs.append(root / f"part-{k}")
        start += n
    return dirs


def test_shard_writer_writes_what_numpy_reads(tmp_path):
    (d,) = write_parts(tmp_path, [10])
    a = load_shards(d)
    assert a["a"].shape == (10, 3) and a["a"].dtype == np.uint16 and (a["a"][:, 0] == np.arange(10)).all()
    assert np.load(d / "w.npy").shape == (10, 2)


def test_shard_set_gathers_like_the_concatenation(tmp_path):
    dirs = write_parts(tmp_path, [5, 1, 9, 4])
    whole = {name: np.concatenate([load_shards(d)[name] for d in dirs]) for name in ("a", "w")}
    sets = load_shard_set(dirs)
    for s in sets.values():
        s.max_open = 2  # parts are opened and closed as batches need them
    idx = np.random.default_rng(1).integers(0, 19, 40)
    for name in ("a", "w"):
        assert len(sets[name]) == 19 and sets[name].dtype == whole[name].dtype
        np.testing.assert_array_equal(sets[name][idx], whole[name][idx])
        np.testing.assert_array_equal(np.asarray(sets[name]), whole[name])
    assert len(sets["a"]._open) <= 2
    assert shard_set_sources(dirs) == [(str(d), n) for d, n in zip(dirs, [5, 1, 9, 4], strict=True)]


def test_shard_set_errors_name_the_part(tmp_path):
    dirs = write_parts(tmp_path, [3, 3])
    np.save(dirs[1] / "a.npy", np.zeros((2, 3), np.uint16))  # a part whose rows disagree with its meta.json
    sets = load_shard_set(dirs)
    with pytest.raises(ValueError, match="part-1/a.npy: .*meta.json says"):
        sets["a"][np.array([4])]
    (tmp_path / "x").mkdir()
    other = write_parts(tmp_path / "x", [2])
    np.save(other[0] / "a.npy", np.zeros((2, 3), np.int32))
    (other[0] / "meta.json").write_text((other[0] / "meta.json").read_text().replace("uint16", "int32"))
    with pytest.raises(ValueError, match="differ from"):
        load_shard_set([dirs[0], other[0]])


def test_narrow_dtypes_keep_the_values():
    f = {"input_ids": np.array([[0, 30521]], np.int32), "masked_lm_weights": np.array([[1.0, 0.0]], np.float32),
         "next_sentence_labels": np.array([[1]], np.int32)}  # fmt: skip
    n = narrow_pretraining(f, 30522)
    assert n["input_ids"].dtype == np.uint16 and n["next_sentence_labels"].dtype == np.uint8
    assert all(np.array_equal(n[k], f[k]) for k in f)
    assert narrow_pretraining(f, 119547)["input_ids"].dtype == np.int32  # a vocabulary past 65,536
