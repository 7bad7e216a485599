"""Two-phase pretraining (issue 27): phase 1 at a short sequence, phase 2 at a longer one from phase 1's snapshot,
weights and optimizer moments carried, step and schedule restarted (NVIDIA DeepLearningExamples' --phase2)."""

from __future__ import annotations

import random

import pytest
import torch
from safetensors.torch import load_file

from bertkit.cli import main
from bertkit.tasks.pretrain.data import CreatePretrainingDataConfig, create_pretraining_data

WORDS = "the a of and to in city river music film century king war transformers bidirectional".split()


def google_text(n: int) -> str:
    """`n` documents of 1-8 sentences, Google's format."""
    rng = random.Random(0)
    docs = ["\n".join(" ".join(rng.choices(WORDS, k=rng.randint(3, 20))) + "." for _ in range(rng.randint(1, 8)))
            for _ in range(n)]  # fmt: skip
    return "\n\n".join(docs) + "\n"


@pytest.fixture(scope="module")
def phases(tmp_path_factory):
    """Records from one text at (seq 32, 5 predictions) and (seq 64, 10): shards in --output_dir parts."""
    root = tmp_path_factory.mktemp("two_phase")
    text = root / "corpus.txt"
    text.write_text(google_text(40), encoding="utf-8")
    for seq, pred in ((32, 5), (64, 10)):
        create_pretraining_data(CreatePretrainingDataConfig.from_flags(
            input_file=str(text), output_dir=str(root / f"seq{seq}"), max_seq_length=seq, max_predictions_per_seq=pred,
            dupe_factor=1, output_format="shards", chunk_size_mb=0.002))  # fmt: skip
    return root


def flags(data, out, seq, pred, **kw):
    f = {"data_dir": data, "seq_length": seq, "max_predictions_per_seq": pred, "num_hidden_layers": 1,
         "num_attention_heads": 2, "hidden_size_per_head": 8, "max_position_embeddings": 64,
         "batch_size_per_device": 4, "log_dir": out / "log", "model_save_dir": out / "save",
         "save_last_snapshot": True, "warmup_batches": 0, "loss_print_every_n_iter": 1, "optimizer": "lamb"} | kw  # fmt: skip
    return ["pretrain", *(f"--{k}={v}" for k, v in f.items())]


def state(out):
    return torch.load(out / "save" / "last_snapshot" / "train_state.pt", weights_only=True)


@pytest.mark.parametrize("gpus", [1, 2])
def test_phase_two_carries_weights_and_moments_and_restarts_the_step(phases, tmp_path, capsys, gpus):
    one, two, fresh = tmp_path / "one", tmp_path / "two", tmp_path / "fresh"
    assert main(flags(phases / "seq32", one, 32, 5, iter_num=3, learning_rate=1e-3)) == 0
    phase1 = one / "save" / "last_snapshot"
    # Phase 2 at learning rate 0: the weights stay phase 1's; a control run loads the same weights with a fresh
    # optimizer. Both see the same first batch, so their first moments differ by exactly beta1 x phase 1's.
    phase2 = {"iter_num": 1, "learning_rate": 0.0, "gpu_num_per_node": gpus}
    assert main(flags(phases / "seq64", two, 64, 10, phase1_snapshot=phase1, **phase2)) == 0
    assert gpus > 1 or "Phase 2 from" in capsys.readouterr().out  # (two processes print to their own stdout)
    w1, w2 = load_file(phase1 / "model.safetensors"), load_file(two / "save" / "last_snapshot" / "model.safetensors")
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    s1, s2 = state(one), state(two)
    assert s1["step"] == 3 and s2["step"] == 1  # the step count restarts
    if gpus > 1:
        return
    assert main(flags(phases / "seq64", fresh, 64, 10, model_load_dir=phase1, **phase2)) == 0
    s0 = state(fresh)
    b1 = s2["optimizer"]["param_groups"][0]["betas"][0]
    for k, st in s2["optimizer"]["state"].items():
        assert st["step"] == 1  # bias correction restarts too
        carried = st["exp_avg"] - s0["optimizer"]["state"][k]["exp_avg"]
        torch.testing.assert_close(carried, b1 * s1["optimizer"]["state"][k]["exp_avg"], rtol=1e-4, atol=1e-7)


def test_phase_two_refuses_what_cannot_carry_over(phases, tmp_path, capsys):
    one = tmp_path / "one"
    assert main(flags(phases / "seq32", one, 32, 5, iter_num=1, max_position_embeddings=32)) == 0
    snap = one / "save" / "last_snapshot"
    assert main(flags(phases / "seq64", tmp_path / "a", 64, 10, iter_num=1, phase1_snapshot=snap)) == 2
    assert "--seq_length 64: the phase-1 model takes at most 32 tokens" in capsys.readouterr().err
    assert main(flags(phases / "seq32", tmp_path / "b", 32, 5, phase1_snapshot=snap, optimizer="adamw")) == 2
    assert "pass --optimizer lamb" in capsys.readouterr().err
