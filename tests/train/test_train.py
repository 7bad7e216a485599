"""The training loop: exact resume, accumulation, snapshots, logging, signals, bad flags."""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest
import torch

from bertkit.checkpoint.snapshot import check_writable, load_snapshot, save_snapshot
from bertkit.model.bert import BertForPreTraining
from bertkit.model.config import BertConfig
from bertkit.runtime.dist import DistEnv, Stopped
from bertkit.tasks.pretrain.task import SyntheticData, pretrain_step_loss
from bertkit.train.config import TrainConfig
from bertkit.train.loop import Task, fit
from bertkit.train.metrics import log_final_eval

CFG = BertConfig(
    vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
    max_position_embeddings=64,  # dropout stays on (0.1): resume must restore the RNG too
)  # fmt: skip


def train_cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(
        learning_rate=1e-3, batch_size_per_device=4, iter_num=20, warmup_batches=5, loss_print_every_n_iter=5,
        model_save_every_n_iter=1000, model_save_dir=str(tmp_path / "save"), log_dir=str(tmp_path / "log"),
    )  # fmt: skip
    base.update(kw)
    return TrainConfig.from_flags(**base)


def run(tmp_path, resume=None, loader=None, model=None, quiet=True, extras=None, **kw):
    torch.manual_seed(0)
    model = model or BertForPreTraining(CFG)
    loader = loader or SyntheticData(4, 16, 3, CFG.vocab_size, seed=7)
    state = None
    if resume:
        weights, _, state = load_snapshot(resume)
        model.load_state_dict(weights)
    out, history = [], []
    summary = fit(model, CFG, Task(pretrain_step_loss, loader, snapshot_extras=extras), train_cfg(tmp_path, **kw),
                  DistEnv(), state, print_fn=(lambda s: None) if quiet else out.append, on_log=history.append)  # fmt: skip
    summary["history"] = history
    return model, summary, out


def losses(summary, start=0):
    return [(r["step"], r["total_loss"], r["mlm_loss"]) for r in summary["history"] if r["step"] > start]


def test_resume_equals_uninterrupted_bit_for_bit(tmp_path):
    model_a, straight, _ = run(tmp_path / "a", log_every_n_iter=1)
    run(tmp_path / "b", iter_num=20, model_save_every_n_iter=10, log_every_n_iter=1)
    snap = tmp_path / "b" / "save" / "snapshot_10"
    model_c, resumed, _ = run(tmp_path / "c", resume=snap, log_every_n_iter=1)
    assert losses(resumed) == losses(straight, start=10)  # floats compared exactly
    for (name, a), c in zip(model_a.state_dict().items(), model_c.state_dict().values(), strict=True):
        assert torch.equal(a, c), name


def test_accumulation_equals_a_bigger_batch(tmp_path):
    """2 micro-steps of 4 == 1 step of 8 when each micro-batch's loss is a mean over equal-sized halves."""
    cfg_nodrop = BertConfig(**dict(CFG.to_dict(), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))

    class Halves:  # yields the two halves of each 8-batch in turn
        def __init__(self, n):
            self.src, self.n = SyntheticData(8, 16, 3, 99, seed=3), n

        def __iter__(self):
            for b in self.src:
                for h in range(self.n):
                    yield {k: v.chunk(self.n)[h] for k, v in b.items()}

        def state_dict(self):
            return {}

    torch.manual_seed(0)
    a = BertForPreTraining(cfg_nodrop)
    b = BertForPreTraining(cfg_nodrop)
    b.load_state_dict(a.state_dict())

    def loss_nsp_free(model, batch):  # MLM normalised per micro-batch differs from per-batch; use NSP only
        _, parts = pretrain_step_loss(model, batch)
        return parts["nsp_loss"], {"nsp_loss": parts["nsp_loss"]}

    kw = dict(iter_num=3, max_grad_norm=0.0, optimizer="adamw")
    fit(a, cfg_nodrop, Task(loss_nsp_free, Halves(1)), train_cfg(tmp_path / "a", batch_size_per_device=8, **kw),
        DistEnv(), print_fn=lambda s: None)  # fmt: skip
    fit(b, cfg_nodrop, Task(loss_nsp_free, Halves(2)),
        train_cfg(tmp_path / "b", batch_size_per_device=4, num_accumulation_steps=2, **kw), DistEnv(),
        print_fn=lambda s: None)  # fmt: skip
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-5), name


def test_weights_cast_once_per_step_equal_a_cast_per_micro_step(tmp_path):
    """bf16 with 2 micro-steps: fit's one autocast context per step gives the losses and weights of a plain loop
    with a context per micro-step, bit for bit (dropout on), and casts each weight once a step, not twice."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from bertkit.train.optim import build_optimizer, learning_rate, set_lr

    class CountCasts(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            self.n += func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.bfloat16
            return func(*args, **kwargs)

    kw = dict(iter_num=3, num_accumulation_steps=2, precision="bf16", optimizer="adamw", max_grad_norm=0.0,
              log_every_n_iter=1)  # fmt: skip
    with CountCasts() as fit_casts:
        model, summary, _ = run(tmp_path / "fit", **kw)

    cfg = train_cfg(tmp_path / "plain", **kw)  # the plain loop: autocast around each micro-step's forward
    torch.manual_seed(0)
    plain = BertForPreTraining(CFG).train()
    opt = build_optimizer(cfg.optimizer.optimizer, plain, cfg.optimizer.learning_rate, cfg.optimizer.weight_decay_rate)
    it, plain_losses = iter(SyntheticData(4, 16, 3, CFG.vocab_size, seed=7)), []
    with CountCasts() as plain_casts:
        o, steps = cfg.optimizer, cfg.training.iter_num
        for step in range(steps):
            set_lr(opt, learning_rate(step, o.learning_rate, o.warmup_batches, steps))
            total = 0.0
            for _ in range(2):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss, _ = pretrain_step_loss(plain, next(it))
                (loss / 2).backward()
                total += loss.detach().float()
            torch.nn.utils.clip_grad_norm_(list(plain.parameters()), float("inf"), foreach=True)
            opt.step()
            opt.zero_grad(set_to_none=True)
            plain_losses.append(float(total / 2))
    assert [r["total_loss"] for r in summary["history"]] == plain_losses
    for name, p in plain.state_dict().items():
        assert torch.equal(model.state_dict()[name], p), name
    weights = sum(isinstance(m, torch.nn.Linear) for m in plain.modules())
    assert (
        plain_casts.n - fit_casts.n >= weights * cfg.training.iter_num
    )  # each Linear weight cast once a step, not twice


def test_seed_log_lines_and_metrics(tmp_path):
    _, summary, out = run(tmp_path, quiet=False, save_last_snapshot=True)
    lines = [s for s in out if s.startswith("iter ")]
    assert len(lines) == 4 and lines[0].startswith("iter 4, total_loss: ")
    assert "mlm_loss: " in lines[0] and "nsp_loss: " in lines[0] and lines[0].endswith("(sentences/sec)")
    assert "(sec/batch), " in lines[0]
    assert any(s.startswith("average speed: ") for s in out)
    assert f"Saving model to {tmp_path / 'save' / 'last_snapshot'}" in out
    records = [json.loads(x) for x in (tmp_path / "log" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 21))
    for key in ("total_loss", "mlm_loss", "nsp_loss", "lr", "grad_norm"):
        assert key in records[0]
    assert "sentences_per_sec" in records[4]
    assert records[0]["lr"] == 0.0 and records[5]["lr"] == pytest.approx(1e-3 * (1 - 5 / 20))
    weights, cfg, state = load_snapshot(tmp_path / "save" / "last_snapshot")
    assert cfg == CFG and state["step"] == 20 and state["ranks"][0]["loader"] == {"pos": 20}


def test_loss_falls_on_a_fixed_pool(tmp_path):
    loader = SyntheticData(8, 16, 3, CFG.vocab_size, seed=1, num_batches=2)
    _, summary, _ = run(tmp_path, loader=loader, iter_num=60, warmup_batches=0, learning_rate=3e-3)
    first, last = summary["history"][0]["mlm_loss"], summary["history"][-1]["mlm_loss"]
    assert last < first - 1.0


def test_sigterm_snapshots_and_stops(tmp_path):
    class Slow(SyntheticData):
        def __iter__(self):
            for i, b in enumerate(super().__iter__()):
                if i == 3:
                    threading.Timer(0.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
                    threading.Event().wait(0.2)
                yield b

    out = []
    with pytest.raises(Stopped) as stopped:
        fit(BertForPreTraining(CFG), CFG, Task(pretrain_step_loss, Slow(4, 16, 3, 99, seed=7)), train_cfg(tmp_path),
            DistEnv(), print_fn=out.append)  # fmt: skip
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    snaps = list((tmp_path / "save").glob("snapshot_*"))
    assert len(snaps) == 1 and int(snaps[0].name[9:]) < 20 and (snaps[0] / "train_state.pt").is_file()
    assert any(f"--resume {snaps[0]}" in s for s in out)


def test_snapshot_save_is_atomic(tmp_path, monkeypatch):
    model = BertForPreTraining(CFG)
    path = tmp_path / "snap"
    save_snapshot(path, model, CFG, {"step": 1})
    before = (path / "model.safetensors").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises((OSError, ValueError)):  # a write error the user can act on is a ValueError with the path
        save_snapshot(path, model, CFG, {"step": 2})
    assert (path / "model.safetensors").read_bytes() == before  # the previous snapshot is untouched


def test_bad_resume_dir_and_unwritable_save_dir(tmp_path):
    with pytest.raises(ValueError, match="not a bertkit snapshot"):
        load_snapshot(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot be written"):
        check_writable(str(blocker / "sub"))


@pytest.mark.parametrize("flag, value", [("iter_num", 0), ("batch_size_per_device", -1), ("learning_rate", -1.0)])
def test_bad_flags(tmp_path, flag, value):
    with pytest.raises(ValueError, match=f"--{flag}"):
        train_cfg(tmp_path, **{flag: value})


def test_warmup_longer_than_run_warns(tmp_path):
    _, _, out = run(tmp_path, quiet=False, iter_num=2, warmup_batches=10, loss_print_every_n_iter=1)
    assert any("warmup_batches (10) > iter_num (2)" in s for s in out)


def test_a_step_makes_no_host_sync(tmp_path):
    """No aten._local_scalar_dense (a device -> host copy that stalls a GPU) inside a training step: three steps
    make exactly as many as one (those of the end-of-run log flush)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountSyncs(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += func is torch.ops.aten._local_scalar_dense.default
            return func(*args, **(kwargs or {}))

    def syncs(iters: int) -> int:
        with CountSyncs() as counter:
            run(tmp_path / str(iters), iter_num=iters, loss_print_every_n_iter=1000, log_every_n_iter=1000)
        return counter.n

    assert syncs(3) == syncs(1)


def test_resume_latest_and_keep_last_n(tmp_path):
    from bertkit.checkpoint.snapshot import latest_snapshot

    run(tmp_path, iter_num=20, model_save_every_n_iter=4, keep_last_n=2)
    kept = sorted(p.name for p in (tmp_path / "save").iterdir() if p.name.startswith("snapshot_"))
    assert kept == ["snapshot_16", "snapshot_20"]
    assert latest_snapshot(tmp_path / "save").name == "snapshot_20"
    with pytest.raises(ValueError, match="no complete snapshot"):
        latest_snapshot(tmp_path / "nothing")


def test_resume_prunes_the_snapshot_its_vocabulary_came_from(tmp_path):
    """A fine-tuning run resumed from snapshot_2 reads its vocab.txt there; --keep_last_n 1 prunes snapshot_2 at
    snapshot_4, and snapshot_6 still carries the vocabulary (it was read once, at the start)."""
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\nhello\n")
    run(tmp_path / "a", iter_num=2, model_save_every_n_iter=2, extras={"vocab_file": vocab})
    snap2 = tmp_path / "a" / "save" / "snapshot_2"
    run(tmp_path / "a", resume=snap2, iter_num=6, model_save_every_n_iter=2, keep_last_n=1,
        extras={"vocab_file": snap2 / "vocab.txt"})  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "a" / "save").iterdir()) == ["snapshot_6"]
    assert (tmp_path / "a" / "save" / "snapshot_6" / "vocab.txt").read_bytes() == vocab.read_bytes()


def test_metrics_hold_each_step_once_after_resume(tmp_path):
    run(tmp_path, iter_num=20, model_save_every_n_iter=10, log_every_n_iter=1)
    run(tmp_path, resume=tmp_path / "save" / "snapshot_10", iter_num=20, log_every_n_iter=1)
    records = [json.loads(x) for x in (tmp_path / "log" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 21))


def test_the_closing_evaluation_ends_the_log_once(tmp_path):
    """classify and squad end metrics.jsonl with their closing evaluation; an evaluation already recorded at that
    step (--eval_every_n_iter dividing iter_num; a resume from the last snapshot against other dev data) is
    replaced, so each step holds one evaluation and the last one is eval_results.txt's."""
    path = tmp_path / "metrics.jsonl"
    loop = [{"step": 10, "total_loss": 1.5}, {"step": 10, "eval_accuracy": 0.5}, {"step": 12, "total_loss": 1.0},
            {"step": 12, "eval_accuracy": 0.7}]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in loop))
    for _ in range(2):
        log_final_eval(str(tmp_path), 12, {"accuracy": 0.75, "loss": 0.25})
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert records == [*loop[:3], {"step": 12, "eval_accuracy": 0.75, "eval_loss": 0.25}]
