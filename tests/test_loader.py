"""Pretraining data: OFRecord directories and inputs resolved with clear errors, conversion to shards (Google's
golden file included), and the loader: model-ready batches, disjoint ranks, a deterministic shuffle, exact resume,
the same batches whether it reads OFRecord, TFRecord or shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bertkit import records as R
from bertkit.cli import main
from bertkit.loader import PretrainingLoader, convert_data, load_shards, ofrecord_parts, read_dataset
from bertkit.model import BertForPreTraining
from bertkit.pretrain import pretraining_loss, random_batch

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
