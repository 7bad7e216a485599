"""Pretraining data: OFRecord directories and inputs resolved with clear errors, conversion to shards (Google's
golden file included), and the loader: model-ready batches, disjoint ranks, a deterministic shuffle, exact resume,
the same batches whether it reads OFRecord, TFRecord or shards."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bertkit.cli import main
from bertkit.data import records as R
from bertkit.data.loader import (
    ArrayLoader,
    Prefetcher,
    PretrainingLoader,
    ShardSet,
    cache_key,
    cached_shards,
    check_limits,
    convert_data,
    id_limits,
    load_shards,
    ofrecord_parts,
    prefetch,
    read_dataset,
    resolve_inputs,
)
from bertkit.model.bert import BertForPreTraining
from bertkit.tasks.pretrain.task import pretraining_loss, random_batch

T, P = 16, 4


def make_records(n: int) -> list[dict[str, np.ndarray]]:
    """n pretraining records (vocab 99); input_ids[1] is the record's number, so tests can recognise samples."""
    rng = np.random.default_rng(0)
    recs = []
    for i in range(n):
        ids = rng.integers(5, 99, T)
        ids[1] = i
        recs.append(
            {
                "input_ids": ids,
                "input_mask": (np.arange(T) < T - i % 3).astype(np.int64),
                "segment_ids": (np.arange(T) >= T // 2).astype(np.int64),
                "masked_lm_positions": np.array([1, 3, 5, 0]),
                "masked_lm_ids": rng.integers(5, 99, P),
                "masked_lm_weights": np.array([1, 1, 1, 0], np.float32),
                "next_sentence_labels": np.array([i % 2]),
            }
        )
    return recs


def write_dataset(root, n: int) -> dict[str, object]:
    """make_records(n) as a two-part OFRecord directory, a TFRecord file and shards."""
    recs = make_records(n)
    (root / "of").mkdir()
    R.write_ofrecord(root / "of" / "part-0", recs[: n // 2])
    R.write_ofrecord(root / "of" / "part-1", recs[n // 2 :])
    R.write_tfrecord(root / "data.tfrecord", recs)
    convert_data(root / "of", root / "shards", T, P)
    return {"ofrecord": root / "of", "tfrecord": root / "data.tfrecord", "shards": root / "shards"}


@pytest.fixture
def data(tmp_path):
    return write_dataset(tmp_path, 48)


def raises(fn, *needles: str) -> None:
    with pytest.raises(ValueError) as e:
        fn()
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))


# --- inputs and shards ------------------------------------------------------------------------------------------


def test_ofrecord_directories(tmp_path):
    raises(lambda: ofrecord_parts(tmp_path / "nope"), str(tmp_path / "nope"), "no such directory")
    raises(lambda: ofrecord_parts(tmp_path), str(tmp_path), "no OFRecord part", "nothing")
    for i in (0, 1):
        R.write_ofrecord(tmp_path / f"part-{i}", make_records(2))
    assert [p.name for p in ofrecord_parts(tmp_path)] == ["part-0", "part-1"]
    assert [p.name for p in ofrecord_parts(tmp_path, 1)] == ["part-0"]
    raises(lambda: ofrecord_parts(tmp_path, 4), "--data_part_num 4", "part-2, part-3", "found 2: part-0, part-1")
    raises(lambda: read_dataset(str(tmp_path / "*.tfrecord"), {}), "no file matches")
    raises(lambda: read_dataset(f"{tmp_path}/part-0,{tmp_path}/gone", {}), "gone: no such file")


def test_convert_to_shards(data):
    recs = make_records(48)
    spec = R.pretraining_features(T, P)
    shards = load_shards(data["shards"], spec)
    assert isinstance(shards["input_ids"], np.memmap)
    for k, s in spec.items():
        assert shards[k].dtype == s.dtype
        np.testing.assert_array_equal(shards[k], np.stack([r[k] for r in recs]), err_msg=k)
    raises(lambda: load_shards(data["shards"], R.pretraining_features(32, P)), "but --seq_length is 32")
    raises(lambda: convert_data(data["ofrecord"], data["shards"], T, P), "already exists")
    raises(lambda: convert_data(data["shards"], data["shards"].parent / "again", T, P), "already a shard directory")


def test_failed_conversion_leaves_nothing(tmp_path):
    (tmp_path / "in").mkdir()
    recs = make_records(3)
    recs[2]["input_ids"] = recs[2]["input_ids"][:5]
    R.write_ofrecord(tmp_path / "in" / "part-0", recs)
    raises(lambda: convert_data(tmp_path / "in", tmp_path / "out", T, P), "record 2", "'input_ids'", "has 5 values")
    assert [p.name for p in tmp_path.iterdir()] == ["in"]


def test_google_tfrecord_to_ofrecord_and_shards(shared_data, tmp_path):
    golden = shared_data / "golden" / "google-cpd-sample_text-wwmFalse.tfrecord"
    recs = list(R.read_tfrecord(golden))
    (tmp_path / "of").mkdir()
    R.write_ofrecord(tmp_path / "of" / "part-0", recs[:50])
    R.write_ofrecord(tmp_path / "of" / "part-1", recs[50:])
    spec = R.pretraining_features(128, 20)
    in_memory = read_dataset(golden, spec)
    assert convert_data(golden, tmp_path / "from_tf", 128, 20)["num_samples"] == 118
    assert convert_data(tmp_path / "of", tmp_path / "from_of", 128, 20, data_part_num=2)["num_samples"] == 118
    a, b = load_shards(tmp_path / "from_tf"), load_shards(tmp_path / "from_of")
    for k in spec:
        np.testing.assert_array_equal(in_memory[k], np.stack([r[k] for r in recs]), err_msg=k)
        np.testing.assert_array_equal(a[k], in_memory[k], err_msg=k)
        np.testing.assert_array_equal(b[k], in_memory[k], err_msg=k)


def test_convert_data_cli(tmp_path, capsys):
    R.write_tfrecord(tmp_path / "a.tfrecord", make_records(3))
    R.write_tfrecord(tmp_path / "b.tfrecord", make_records(2))
    args = ["--seq_length", str(T), "--max_predictions_per_seq", str(P), "--output_dir", str(tmp_path / "out")]
    assert main(["convert-data", "--input", str(tmp_path / "*.tfrecord"), *args]) == 0
    assert "5 samples from 2 file(s)" in capsys.readouterr().out
    assert load_shards(tmp_path / "out")["input_ids"].shape == (5, T)
    with pytest.raises(SystemExit):
        main(["convert-data", "--output_dir", str(tmp_path / "x")])
    assert "--input is required" in capsys.readouterr().err
    assert main(["convert-data", "--input", str(tmp_path / "gone.tfrecord"), *args[:-1], str(tmp_path / "y")]) == 2
    assert "gone.tfrecord: no such file" in capsys.readouterr().err


# --- the loader -------------------------------------------------------------------------------------------------


def sample_ids(batch) -> list[int]:
    return batch["input_ids"][:, 1].tolist()


def take(loader, n: int) -> list[dict]:
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_batches_are_model_ready(data, tiny_cfg):
    batch = next(iter(PretrainingLoader(data["shards"], 6, T, P)))
    ref = random_batch(6, T, P, 99)
    assert set(batch) == set(ref)
    for k in ref:
        assert batch[k].shape == ref[k].shape and batch[k].dtype == ref[k].dtype, k
    mlm, nsp = BertForPreTraining(tiny_cfg)(
        batch["input_ids"], batch["segment_ids"], batch["input_mask"], batch["masked_lm_positions"]
    )
    total, _, _ = pretraining_loss(
        mlm, nsp, batch["masked_lm_ids"], batch["masked_lm_weights"], batch["next_sentence_labels"]
    )
    assert torch.isfinite(total)


def test_same_batches_from_every_format(data):
    want = take(PretrainingLoader(data["shards"], 5, T, P, seed=3), 12)
    for fmt in ("ofrecord", "tfrecord"):
        got = take(PretrainingLoader(data[fmt], 5, T, P, seed=3), 12)
        for g, w in zip(got, want, strict=True):
            for k in w:
                assert torch.equal(g[k], w[k]), (fmt, k)


@pytest.mark.parametrize("n, world_size", [(48, 3), (50, 4)])
def test_ranks_are_disjoint_and_cover_the_data(tmp_path, n, world_size):
    data = write_dataset(tmp_path, n)
    per_rank = n // world_size
    seen = []
    for rank in range(world_size):
        loader = PretrainingLoader(data["shards"], 4, T, P, rank=rank, world_size=world_size, seed=1)
        ids = [i for b in take(loader, per_rank // 4) for i in sample_ids(b)]
        assert len(set(ids)) == len(ids)
        seen.append(set(ids))
    assert sum(len(s) for s in seen) == len(set().union(*seen)) == n - n % world_size  # disjoint, all but the rest


def test_shuffle_is_deterministic(data):
    def epochs(seed, shuffle=True):
        loader = PretrainingLoader(data["shards"], 48, T, P, seed=seed, shuffle=shuffle)
        return [sample_ids(b) for b in take(loader, 2)]

    a = epochs(0)
    assert a == epochs(0)
    assert a != epochs(1)
    assert a[0] != a[1] and sorted(a[0]) == sorted(a[1]) == list(range(48))  # each epoch a new permutation
    assert epochs(0, shuffle=False) == [list(range(48))] * 2


def test_resume_sees_the_same_samples(data):
    # 48 samples over 2 ranks, batch 5: batches cross epoch boundaries (24 per rank per epoch).
    def loader(rank):
        return PretrainingLoader(data["ofrecord"], 5, T, P, rank=rank, world_size=2, seed=7)

    run = loader(0)
    take(run, 7)
    state = run.state_dict()
    assert state["batches"] == 7 and run.epoch == 1  # 7 batches x 2 ranks x 5 = 70 samples > 48
    rest = take(run, 10)
    resumed = loader(0)
    resumed.load_state_dict(state)
    for a, b in zip(take(resumed, 10), rest, strict=True):
        for k in a:
            assert torch.equal(a[k], b[k]), k
    # Rank 0's saved state resumes rank 1 too: every rank is at the same position.
    other = loader(1)
    take(other, 7)
    other_resumed = loader(1)
    other_resumed.load_state_dict(state)
    assert [sample_ids(b) for b in take(other, 3)] == [sample_ids(b) for b in take(other_resumed, 3)]
    with pytest.raises(ValueError, match="world_size 2, this run 1"):
        PretrainingLoader(data["shards"], 5, T, P, seed=7).load_state_dict(state)


def test_bad_arguments(data):
    with pytest.raises(ValueError, match="has 16 values but --seq_length is 32"):
        PretrainingLoader(data["tfrecord"], 4, 32, P)
    with pytest.raises(ValueError, match="but --max_predictions_per_seq is 8"):
        PretrainingLoader(data["shards"], 4, T, 8)
    with pytest.raises(ValueError, match="rank must be in"):
        PretrainingLoader(data["shards"], 4, T, P, rank=2, world_size=2)


def test_ranks_see_what_accumulation_micro_steps_see(data):
    """Rank r's k-th batch is global batch k * W + r: W processes == 1 process with W micro-steps."""
    single = [sample_ids(b) for b in take(PretrainingLoader(data["shards"], 5, T, P, seed=3), 30)]
    for world in (2, 3):
        for rank in range(world):
            ranked = PretrainingLoader(data["shards"], 5, T, P, rank=rank, world_size=world, seed=3)
            got = [sample_ids(b) for b in take(ranked, 30 // world)]
            assert got == single[rank::world]


# --- record directories sniffed, values checked per batch -------------------------------------------------------


def test_directory_of_tfrecord_parts(tmp_path):
    """A data directory of part-N files is sniffed like a named file: TFRecord parts are read, or named as such."""
    recs = make_records(10)
    (tmp_path / "tf").mkdir()
    R.write_tfrecord(tmp_path / "tf" / "part-0", recs[:6])
    R.write_tfrecord(tmp_path / "tf" / "part-1", recs[6:])
    got = read_dataset(tmp_path / "tf", R.pretraining_features(T, P))
    np.testing.assert_array_equal(got["input_ids"], np.stack([r["input_ids"] for r in recs]))
    assert [fmt for _, fmt in resolve_inputs(tmp_path / "tf")] == ["tfrecord", "tfrecord"]
    raises(
        lambda: read_dataset(tmp_path / "tf", R.pretraining_features(T, P), input_format="ofrecord"),
        "part-0",
        "this is a TFRecord",
        "--input_format tfrecord",
    )


def bad_dataset(root, feature: str, value: int):
    """make_records(20) in two OFRecord parts, with `value` at record 3 of part-1 (sample 13) in `feature`."""
    recs = make_records(20)
    recs[13][feature] = recs[13][feature].copy()
    recs[13][feature][-1] = value
    (root / "bad").mkdir()
    R.write_ofrecord(root / "bad" / "part-0", recs[:10])
    R.write_ofrecord(root / "bad" / "part-1", recs[10:])
    return root / "bad"


@pytest.mark.parametrize(
    "feature, value, kwargs, needle",
    [
        ("input_ids", 120, {"vocab_size": 99}, "[0, 99) (--vocab_size 99"),
        ("masked_lm_ids", -1, {"vocab_size": 99}, "[0, 99) (--vocab_size 99"),
        ("segment_ids", 2, {"type_vocab_size": 2}, "[0, 2) (--type_vocab_size 2"),
        ("masked_lm_positions", T, {}, f"[0, {T}) (--seq_length {T}"),
    ],
)
def test_values_checked_per_batch(tmp_path, feature, value, kwargs, needle):
    """The model does not check its inputs (no host sync): the loader does, in numpy, naming file and record."""
    d = bad_dataset(tmp_path, feature, value)
    for cache in (None, tmp_path / "cache"):
        loader = PretrainingLoader(d, 4, T, P, shuffle=False, cache_dir=cache, **kwargs)
        take(loader, 3)  # samples 0-11 are fine
        raises(lambda ld=loader: next(iter(ld)), f"{d / 'part-1'}: record 3", f"'{feature}'", f"value {value}", needle)
    if kwargs:  # without the model's sizes, only positions and labels are checked
        take(PretrainingLoader(d, 4, T, P, shuffle=False), 5)


def test_value_check_names_shard_sources(tmp_path):
    d = bad_dataset(tmp_path, "input_ids", 500)
    convert_data(d, tmp_path / "shards", T, P)
    loader = PretrainingLoader(tmp_path / "shards", 20, T, P, vocab_size=99)
    raises(lambda: next(iter(loader)), f"{d / 'part-1'}: record 3", "value 500")
    loader = ArrayLoader(
        {"input_ids": np.full((4, 2), 7)}, 2, shuffle=False, limits={"input_ids": (5, "--vocab_size 5")}
    )
    raises(lambda: loader.next_indices(), "sample 0 of the data", "'input_ids': value 7 is outside [0, 5)")
    # The same check for arrays of any task (SQuAD windows, prediction sets), 1-D features included.
    windows = {"input_ids": np.array([[1, 2], [3, 99]]), "segment_ids": np.array([0, 2])}
    raises(lambda: check_limits(windows, id_limits(99)), "sample 1, feature 'input_ids': value 99", "--vocab_size 99")
    raises(lambda: check_limits(windows, id_limits(None, 2), lambda i: f"window {i}"), "window 1", "'segment_ids'")
    check_limits(windows, id_limits(100, 3))


# --- the shard cache: record files converted once, memory-mapped by every process ---------------------------------


def snapshot_of(root) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_cached_shards_equal_parsed_records(data, tmp_path):
    """The global sample stream is the same from the cache as from records parsed in memory, on every rank."""
    cache = tmp_path / "cache"
    before = snapshot_of(data["ofrecord"])
    for fmt in ("ofrecord", "tfrecord"):
        for rank in (0, 1):
            parsed = take(PretrainingLoader(data[fmt], 5, T, P, seed=3, rank=rank, world_size=2), 12)
            cached = PretrainingLoader(data[fmt], 5, T, P, seed=3, rank=rank, world_size=2, cache_dir=cache)
            assert isinstance(cached.arrays["input_ids"], np.memmap | ShardSet)  # several files: one map each
            for g, w in zip(take(cached, 12), parsed, strict=True):
                for k in w:
                    assert torch.equal(g[k], w[k]), (fmt, rank, k)
    assert snapshot_of(data["ofrecord"]) == before  # nothing written beside the data
    built = sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock"))
    # One per record file (two OFRecord parts, one TFRecord file), reused by rank 1.
    assert len(built) == 3 and all(n.startswith("shards-") for n in built)
    assert cached_shards(data["shards"], R.pretraining_features(T, P), cache) == data["shards"]  # shards as they are


def test_cache_key_follows_files_and_flags(data, tmp_path):
    spec = R.pretraining_features(T, P)
    cache = tmp_path / "cache"
    a = cached_shards(data["tfrecord"], spec, cache)
    meta = (a / "meta.json").stat().st_mtime_ns
    assert cached_shards(data["tfrecord"], spec, cache) == a and (a / "meta.json").stat().st_mtime_ns == meta
    assert cached_shards(data["tfrecord"], R.pretraining_features(T, P) | {}, cache) == a
    assert cached_shards(data["tfrecord"], {"input_ids": spec["input_ids"]}, cache) != a  # another feature set
    raises(lambda: cached_shards(data["tfrecord"], R.pretraining_features(32, P), cache), "--seq_length is 32")
    R.write_tfrecord(data["tfrecord"], make_records(7))  # the data changed: a new cache, with the new data
    b = cached_shards(data["tfrecord"], spec, cache)
    assert b != a and load_shards(b)["input_ids"].shape == (7, T)


def test_one_process_builds_the_others_wait(data, tmp_path, monkeypatch):
    """Callers at once (threads here: flock locks belong to open files, so they exclude each other like
    processes): one converts, every caller gets the same directory."""
    import bertkit.data.cache as L

    builds, real = [], L._write_shards

    def slow_write(*args, **kwargs):
        builds.append(threading.get_ident())
        time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(L, "_write_shards", slow_write)
    spec, cache = R.pretraining_features(T, P), tmp_path / "cache"
    results = [None] * 4

    def call(i):
        results[i] = cached_shards(data["ofrecord"], spec, cache, build=i < 2)  # two may build, two only wait

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len(set(results)) == 1 and results[0] is not None
    assert not [p for p in cache.iterdir() if ".tmp-" in p.name]


def test_every_rank_converts_its_share_of_the_files(tmp_path, monkeypatch):
    """cached_parts: ranks start at their own file and skip files another holds; each file is converted once."""
    import bertkit.data.cache as L

    (tmp_path / "of").mkdir()
    for i in range(4):
        R.write_ofrecord(tmp_path / "of" / f"part-{i}", make_records(3))
    builds, real = [], L._write_shards

    def slow_write(sources, *args, **kwargs):
        builds.append((threading.get_ident(), sources[0][0].name))
        time.sleep(0.2)
        return real(sources, *args, **kwargs)

    monkeypatch.setattr(L, "_write_shards", slow_write)
    sources, spec = resolve_inputs(tmp_path / "of"), R.pretraining_features(T, P)
    results = [None, None]

    def call(rank):
        results[rank] = L.cached_parts(sources, spec, tmp_path / "cache", rank=rank, world_size=2)

    threads = [threading.Thread(target=call, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == results[1] and len(results[0]) == 4
    assert sorted(name for _, name in builds) == [f"part-{i}" for i in range(4)]  # each once
    assert len({ident for ident, _ in builds}) == 2  # both ranks converted


def _build_without_locks(args) -> str:
    import bertkit.data.cache as L

    real = L._write_shards
    L.fcntl = None
    L._write_shards = lambda *a, **k: (time.sleep(0.3), real(*a, **k))[1]
    return str(cached_shards(*args))


def test_cache_without_file_locks(data, tmp_path):
    """Where flock is unsupported every process builds; the rename decides and the losers' copies are dropped."""
    import multiprocessing

    args = (data["ofrecord"], R.pretraining_features(T, P), tmp_path / "cache")
    # spawn, not fork: a fork of this many-threaded test process can copy a lock another thread holds, and the
    # worker then waits on it for ever (seen once on a loaded machine); the timeout turns any hang into a failure.
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map_async(_build_without_locks, [args, args]).get(timeout=300)
    assert results[0] == results[1]
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()] == [Path(results[0]).name]
    assert load_shards(results[0])["input_ids"].shape == (48, T)


def test_cache_failures_are_clear(tmp_path):
    spec, cache = R.pretraining_features(T, P), tmp_path / "cache"
    (tmp_path / "in").mkdir()
    recs = make_records(3)
    recs[2]["input_ids"] = recs[2]["input_ids"][:5]
    R.write_ofrecord(tmp_path / "in" / "part-0", recs)
    raises(lambda: cached_shards(tmp_path / "in", spec, cache), "record 2", "has 5 values")
    assert not [p for p in cache.iterdir() if p.is_dir()]  # nothing half-built is left
    # A process that only waits learns the builder's error instead of waiting out its timeout.
    raises(lambda: cached_shards(tmp_path / "in", spec, cache, build=False, timeout_s=0.1), "could not be built")
    # Nobody building: the wait ends with a message naming the directory.
    R.write_ofrecord(tmp_path / "in" / "part-0", make_records(3))
    raises(
        lambda: cached_shards(tmp_path / "in", spec, cache, build=False, timeout_s=0.2),
        "waited 0 s",
        "no process is building it",
    )
    # A builder killed mid-way leaves a temporary directory; the next builder removes it.
    key, _ = cache_key(resolve_inputs(tmp_path / "in"), spec)
    (cache / f".{key}.tmp-otherhost-1").mkdir()
    assert cached_shards(tmp_path / "in", spec, cache).name == key
    assert not list(cache.glob(".shards-*"))
    (tmp_path / "file").write_text("")
    raises(lambda: cached_shards(tmp_path / "in", spec, tmp_path / "file" / "cache"), "cannot create it")


# --- background prefetch ----------------------------------------------------------------------------------------


def test_prefetch_gives_the_same_batches_and_position(data):
    """The prefetching thread changes nothing a run sees: same batches, and the saved position is the consumer's
    (batches prepared ahead are not counted), so a resume continues at the next unseen batch."""
    plain = take(PretrainingLoader(data["shards"], 5, T, P, seed=3), 15)
    ahead = Prefetcher(PretrainingLoader(data["shards"], 5, T, P, seed=3), depth=4)
    it = iter(ahead)
    got = [next(it) for _ in range(6)]
    deadline = time.monotonic() + 5
    while ahead.loader.batches <= 6 and time.monotonic() < deadline:  # let the thread run ahead
        time.sleep(0.01)
    state = ahead.state_dict()
    assert state["batches"] == 6 and ahead.loader.batches > 6
    got += [next(it) for _ in range(9)]
    ahead.close()
    resumed = Prefetcher(PretrainingLoader(data["shards"], 5, T, P, seed=3))
    resumed.load_state_dict(state)
    got_resumed = take(resumed, 9)
    resumed.close()
    for g, w in zip(got + got_resumed, plain + plain[6:], strict=True):
        for k in w:
            assert torch.equal(g[k], w[k]), k
    assert prefetch(ahead.loader, "cpu") is ahead.loader  # only CUDA input is prefetched


def test_prefetch_raises_where_the_bad_batch_is(tmp_path):
    d = bad_dataset(tmp_path, "input_ids", 120)
    ahead = Prefetcher(PretrainingLoader(d, 4, T, P, shuffle=False, vocab_size=99))
    it = iter(ahead)
    assert len([next(it) for _ in range(3)]) == 3  # samples 0-11 are fine, though the thread has met sample 13
    raises(lambda: next(it), f"{d / 'part-1'}: record 3", "value 120")
    ahead.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs a CUDA build and device")
def test_prefetch_pins_for_cuda(data):
    ahead = prefetch(PretrainingLoader(data["shards"], 5, T, P, seed=3), "cuda")
    batch = next(iter(ahead))
    assert all(v.is_pinned() for v in batch.values())
    ahead.close()
