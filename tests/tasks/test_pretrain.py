"""Pretraining losses: Google's weighted MLM mean and NSP cross-entropy, checked by hand."""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bertkit.tasks.pretrain.task import pretraining_loss, random_batch


def test_losses_by_hand():
    # Two sequences, two slots each; the second slot of sequence 1 is padding (weight 0).
    mlm_logits = torch.tensor(
        [[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[0.0, 0.0, 3.0], [9.0, 9.0, 9.0]]]
    )  # (B=2, P=2, V=3)
    ids = torch.tensor([[0, 1], [2, 0]])
    weights = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    nsp_logits = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0])

    def ce(logits, target):
        return -logits[target] + math.log(sum(math.exp(v) for v in logits))

    want_mlm = (ce([2, 0, 0], 0) + ce([0, 1, 0], 1) + ce([0, 0, 3], 2)) / (3 + 1e-5)
    want_nsp = (ce([1, 0], 0) + ce([0, 2], 0)) / 2
    total, mlm, nsp = pretraining_loss(mlm_logits, nsp_logits, ids, weights, labels)
    assert abs(mlm.item() - want_mlm) < 1e-6
    assert abs(nsp.item() - want_nsp) < 1e-6
    assert abs(total.item() - (want_mlm + want_nsp)) < 1e-6


def test_bf16_logits_give_fp32_loss():
    b = random_batch(2, 16, 4, 50, generator=torch.Generator().manual_seed(0))
    logits = torch.randn(2, 4, 50)
    total32, *_ = pretraining_loss(
        logits, torch.zeros(2, 2), b["masked_lm_ids"], b["masked_lm_weights"], b["next_sentence_labels"]
    )
    total16, *_ = pretraining_loss(
        logits.bfloat16(), torch.zeros(2, 2), b["masked_lm_ids"], b["masked_lm_weights"], b["next_sentence_labels"]
    )
    assert total16.dtype == torch.float32
    assert abs(total16.item() - total32.item()) < 0.05


def test_random_batch_shape_and_masking():
    b = random_batch(4, 128, 20, 1000, generator=torch.Generator().manual_seed(0))
    assert b["input_ids"].shape == (4, 128) and b["masked_lm_positions"].shape == (4, 20)
    assert torch.all(b["masked_lm_weights"].sum(1) == 19)  # round(0.15 * 128) = 19 <= 20
    pos = b["masked_lm_positions"][:, :19]
    assert torch.all(pos > 0) and torch.all(pos[:, 1:] > pos[:, :-1])  # distinct, sorted, never [CLS]
    assert torch.all(b["masked_lm_ids"][:, 19:] == 0)


# --- `bertkit pretrain`, end to end on OFRecord data written here -------------------------------------

T, P = 32, 5


@pytest.fixture
def ofrecord_dir(tmp_path):
    return make_ofrecord_dir(tmp_path / "data")


def make_ofrecord_dir(d):
    """Two OFRecord part files of 24 random pretraining records each (seq T, P masked slots, vocab 99)."""
    from bertkit.data.records import write_ofrecord

    d.mkdir()
    g = torch.Generator().manual_seed(0)
    for part in range(2):
        b = random_batch(24, T, P, 99, generator=g)
        records = [
            {k: (v[i].numpy().astype("float32") if k == "masked_lm_weights" else v[i].reshape(-1).numpy().astype("int32"))
             for k, v in b.items()}
            for i in range(24)
        ]  # fmt: skip
        write_ofrecord(d / f"part-{part}", records)
    return d


def seed_flags(data_dir, out, **kw):
    """The seed's tutorial command line, shrunk to a tiny model."""
    flags = {
        "gpu_num_per_node": 1, "learning_rate": 1e-3, "batch_size_per_device": 4, "iter_num": 20,
        "loss_print_every_n_iter": 5, "seq_length": T, "max_predictions_per_seq": P, "num_hidden_layers": 2,
        "num_attention_heads": 2, "max_position_embeddings": 64, "type_vocab_size": 2, "vocab_size": 99,
        "attention_probs_dropout_prob": 0.1, "hidden_dropout_prob": 0.1, "hidden_size_per_head": 16,
        "use_boxing_v2": "True", "data_dir": data_dir, "data_part_num": 2, "log_dir": out / "log",
        "model_save_dir": out / "save", "warmup_batches": 5, "log_every_n_iter": 1,
    }  # fmt: skip
    flags.update(kw)
    return ["pretrain", *(f"--{k}={v}" for k, v in flags.items())]


def metrics(out) -> list[dict]:
    return [json.loads(x) for x in (out / "log" / "metrics.jsonl").read_text().splitlines() if '"total_loss"' in x]


def test_seed_command_line_runs_and_prints_what_the_seed_prints(ofrecord_dir, tmp_path, capsys):
    from bertkit.cli import main

    assert main([*seed_flags(ofrecord_dir, tmp_path), "--save_last_snapshot", "True"]) == 0
    out = capsys.readouterr().out
    assert "Running bert: num_gpu_per_node = 1, num_nodes = 1." in out
    assert "use_boxing_v2 = True" in out and "hidden_size_per_head = 16" in out and "Time stamp: " in out
    assert "Init model on demand" in out
    assert re.search(r"iter 4, total_loss: [\d.]+, mlm_loss: [\d.]+, nsp_loss: [\d.]+, speed: [\d.]+\(sec/batch\), "
                     r"[\d.]+\(sentences/sec\)", out)  # fmt: skip
    assert "average speed: " in out and f"Saving model to {tmp_path / 'save' / 'last_snapshot'}" in out
    assert "not saved" not in out
    assert len(metrics(tmp_path)) == 20
    # The snapshot loads back (--model_load_dir) into the next run.
    assert main(seed_flags(ofrecord_dir, tmp_path / "2", model_load_dir=tmp_path / "save" / "last_snapshot")) == 0
    out = capsys.readouterr().out
    assert "Restoring model from" in out
    # Without --save_last_snapshot True (the seed's default) nothing is kept at the end, and the run says so.
    assert "note: the model after iter 20 is not saved (--save_last_snapshot False)" in out
    # The same command again into the same folders would train over the first run: refused, with the way on.
    assert main(seed_flags(ofrecord_dir, tmp_path)) == 2
    assert "--resume latest" in capsys.readouterr().err


def test_sigkill_then_resume_equals_straight_run(ofrecord_dir, tmp_path):
    base = [sys.executable, "-m", "bertkit"]
    straight = subprocess.run([*base, *seed_flags(ofrecord_dir, tmp_path / "a")], capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    proc = subprocess.Popen([*base, *seed_flags(ofrecord_dir, tmp_path / "b", model_save_every_n_iter=10)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    snap = tmp_path / "b" / "save" / "snapshot_10"
    for line in proc.stdout:
        if "snapshot_10" in line:  # printed as the save starts; the directory appears whole when it ends
            deadline = time.monotonic() + 60
            while not snap.exists() and time.monotonic() < deadline:
                time.sleep(0.001)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    resumed = subprocess.run([*base, *seed_flags(ofrecord_dir, tmp_path / "c", resume=snap)], capture_output=True,
                             text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    a = [(r["step"], r["total_loss"], r["mlm_loss"], r["nsp_loss"]) for r in metrics(tmp_path / "a")]
    c = [(r["step"], r["total_loss"], r["mlm_loss"], r["nsp_loss"]) for r in metrics(tmp_path / "c")]
    assert c == a[10:]  # bit for bit, dropout on


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"data_dir": "missing-dir"}, "missing-dir"),
        ({"seq_length": 16}, "seq_length"),
        ({"max_predictions_per_seq": 4}, "max_predictions_per_seq"),
        ({"data_part_num": 5}, "part-"),
    ],
)
def test_bad_data_flags_are_clear_errors(ofrecord_dir, tmp_path, capsys, flags, message):
    from bertkit.cli import main

    flags = dict(flags)
    assert main(seed_flags(flags.pop("data_dir", ofrecord_dir), tmp_path, **flags)) == 2
    err = capsys.readouterr().err
    assert "bertkit pretrain: error:" in err and message in err


def test_unknown_flag_suggests_the_closest(capsys):
    from bertkit.cli import main

    with pytest.raises(SystemExit):
        main(["pretrain", "--data_dri", "x"])
    assert "data_dir" in capsys.readouterr().err


def test_eval_data_gives_mlm_and_nsp_accuracy(ofrecord_dir, tmp_path, capsys):
    from bertkit.cli import main

    flags = seed_flags(ofrecord_dir, tmp_path, iter_num=6, eval_data_dir=ofrecord_dir, eval_every_n_iter=3)
    assert main(flags) == 0
    assert "eval at iter 5: mlm_accuracy: " in capsys.readouterr().out
    lines = [json.loads(x) for x in (tmp_path / "log" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in lines if "eval_mlm_accuracy" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert all(0 <= r["eval_mlm_accuracy"] <= 1 and 0 <= r["eval_nsp_accuracy"] <= 1 for r in evals)


# --- the MLM loss does not depend on how the global batch is cut ------------------------------------------------

NORM_CFG = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip


def _uneven_samples() -> dict[str, torch.Tensor]:
    """Four samples with 5, 1, 3 and 0 masked tokens: per-micro-batch means would weigh them differently."""
    b = random_batch(4, 16, 5, 99, generator=torch.Generator().manual_seed(1))
    b["masked_lm_weights"] = torch.tensor([[1.0] * 5, [1, 0, 0, 0, 0], [1, 1, 1, 0, 0], [0.0] * 5])
    return b


class _Slices:
    """The loader protocol over the four samples: rank r's micro-step m of a step takes global micro-batch
    m * world + r, as the real loader deals them (W ranks x M micro-steps = one process with W*M micro-steps)."""

    def __init__(self, batch_size: int, rank: int = 0, world: int = 1):
        self.samples, self.bs, self.rank, self.world = _uneven_samples(), batch_size, rank, world

    def __iter__(self):
        k = 0
        while True:
            lo = ((k * self.world + self.rank) * self.bs) % 4
            yield {n: v[lo : lo + self.bs] for n, v in self.samples.items()}
            k += 1

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def _one_step(tmp, batch_size: int, accum: int, rank: int = 0, world: int = 1, norm: bool = True):
    from bertkit.model.bert import BertForPreTraining
    from bertkit.model.config import BertConfig
    from bertkit.runtime.dist import DistEnv
    from bertkit.tasks.pretrain.task import masked_count, pretrain_step_loss
    from bertkit.train.config import TrainConfig
    from bertkit.train.loop import Task, fit

    cfg = BertConfig(**NORM_CFG)
    torch.manual_seed(0)
    model = BertForPreTraining(cfg)
    tc = TrainConfig.from_flags(learning_rate=1e-2, batch_size_per_device=batch_size, num_accumulation_steps=accum, iter_num=1,
                     warmup_batches=0, loss_print_every_n_iter=1, log_dir=str(tmp / "log"), max_grad_norm=0,
                     model_save_dir=str(tmp / "save"), optimizer="adamw")  # fmt: skip
    records, grads = [], {}
    real_clip = torch.nn.utils.clip_grad_norm_

    def spy(params, *a, **k):  # the step's gradients, after the micro-steps and the all-reduce, before the update
        params = list(params)
        grads.update({i: p.grad.clone() for i, p in enumerate(params)})
        return real_clip(params, *a, **k)

    torch.nn.utils.clip_grad_norm_ = spy
    try:
        task = Task(pretrain_step_loss, _Slices(batch_size, rank, world), masked_count if norm else None)
        fit(model, cfg, task, tc, DistEnv(rank=rank, world_size=world), print_fn=lambda s: None, on_log=records.append)
    finally:
        torch.nn.utils.clip_grad_norm_ = real_clip
    return records[0], grads


def _two_ranks(rank: int, port: int, tmp: str, out: str) -> None:
    import torch.distributed as tdist

    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    results = [_one_step(Path(tmp) / f"{rank}-{bs}", bs, accum, rank, 2) for bs, accum in ((2, 1), (1, 2))]
    if rank == 0:
        torch.save(results, out)
    tdist.destroy_process_group()


def test_mlm_loss_is_normalised_over_the_global_batch(tmp_path):
    """One batch of 4 == 2 micro-steps of 2 == 2 ranks x 1 micro-step of 2 == 2 ranks x 2 micro-steps of 1:
    losses and every gradient (relative 1e-6). Google's per-micro-batch form differs."""
    import socket

    import torch.multiprocessing as mp

    whole, g_whole = _one_step(tmp_path / "a", 4, 1)
    variants = [_one_step(tmp_path / "b", 2, 2)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_two_ranks, args=(port, str(tmp_path), str(tmp_path / "ranks.pt")), nprocs=2)
    variants += torch.load(tmp_path / "ranks.pt", weights_only=True)
    assert len(variants) == 3
    for record, grads in variants:
        for k in ("total_loss", "mlm_loss", "nsp_loss", "grad_norm"):
            assert record[k] == pytest.approx(whole[k], rel=1e-6), k
        for i, g in grads.items():
            assert (g - g_whole[i]).norm() <= 1e-6 * g_whole[i].norm() + 1e-12, i
    per_micro, _ = _one_step(tmp_path / "c", 2, 2, norm=False)
    assert abs(per_micro["mlm_loss"] - whole["mlm_loss"]) > 1e-3  # the test can tell the two forms apart
