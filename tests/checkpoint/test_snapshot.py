"""Snapshots: nothing lost (faults at random offsets, kill -9, a full disk), nothing silently wrong (a flipped bit,
a truncated file, changed flags on --resume), and the one atomic writer under them (atomic.py)."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bertkit.checkpoint.snapshot import (
    MANIFEST,
    SnapshotError,
    check_writable,
    latest_snapshot,
    load_snapshot,
    save_snapshot,
    snapshot_extras,
    verify_snapshot,
)
from bertkit.checkpoint.snapshot import (
    compare_flags as compare,
)
from bertkit.model.bert import BertForPreTraining
from bertkit.model.config import BertConfig
from bertkit.runtime import atomic
from bertkit.runtime.atomic import DiskFullError, OutputError, atomic_output, remove_stale, temp_name

CFG = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=32)  # fmt: skip


def model_and_state(seed: int = 0) -> tuple[BertForPreTraining, dict]:
    torch.manual_seed(seed)
    model = BertForPreTraining(CFG)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))[0].sum().backward()
    opt.step()
    return model, {"step": seed, "optimizer": opt.state_dict(), "rng": {"torch": torch.get_rng_state()}}


def write_vocab(path: Path) -> Path:
    path.write_text("".join(f"tok{i}\n" for i in range(CFG.vocab_size)))
    return path


@pytest.fixture
def saved(tmp_path) -> Path:
    model, state = model_and_state(1)
    path = tmp_path / "snapshot_1"
    save_snapshot(path, model, CFG, state, vocab_file=write_vocab(tmp_path / "v.txt"), do_lower_case=False,
                  run_config={"learning_rate": 1e-4, "seq_length": 128})  # fmt: skip
    return path


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text, text
    return text


def test_round_trip_with_vocabulary_casing_and_flags(saved):
    weights, cfg, state = load_snapshot(saved)
    model, _ = model_and_state(1)
    assert cfg == CFG and state["step"] == 1
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    vocab, lower, run = snapshot_extras(saved)
    assert Path(vocab).read_text().startswith("tok0\n") and lower is False and run["seq_length"] == 128
    files = json.loads((saved / MANIFEST).read_text())["files"]
    assert sorted(files) == sorted(p.name for p in saved.iterdir() if p.name != MANIFEST)
    assert verify_snapshot(saved) is True
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "name", ["model.safetensors", "train_state.pt", "bert_config.json", "vocab.txt", "tokenizer_config.json",
             "run_config.json"],
)  # fmt: skip
def test_a_flipped_bit_in_any_file_is_refused(saved, name):
    data = bytearray((saved / name).read_bytes())
    i = random.Random(name).randrange(len(data))
    data[i] ^= 1 << random.Random(i).randrange(8)
    (saved / name).write_bytes(bytes(data))
    with pytest.raises(SnapshotError) as e:
        load_snapshot(saved)
    assert str(saved / name) in one_line(e) and "sha256 differs" in str(e.value)


def test_a_flipped_bit_in_the_manifest_is_refused(saved):
    data = bytearray((saved / MANIFEST).read_bytes())
    for i in range(0, len(data), 97):  # wherever it lands: JSON damaged, a digest or a size changed
        data[i] ^= 2
        (saved / MANIFEST).write_bytes(bytes(data))
        with pytest.raises(SnapshotError) as e:
            load_snapshot(saved)
        one_line(e)
        data[i] ^= 2


def test_truncated_files_name_the_file(saved):
    (saved / "train_state.pt").write_bytes((saved / "train_state.pt").read_bytes()[:100])
    with pytest.raises(SnapshotError, match="train_state.pt: 100 bytes, the manifest says") as e:
        load_snapshot(saved)
    one_line(e)


@pytest.mark.parametrize("name, what", [("model.safetensors", "damaged safetensors file"),
                                        ("train_state.pt", "damaged PyTorch file")])  # fmt: skip
def test_damaged_files_without_a_manifest_are_one_line(saved, name, what):
    (saved / MANIFEST).unlink()  # a snapshot without its manifest: loaded unchecked, with a warning; no traceback
    with pytest.warns(UserWarning, match="has no manifest.json: its files are loaded unchecked"):
        load_snapshot(saved)
    whole = (saved / name).read_bytes()
    for cut in (5, 200):
        (saved / name).write_bytes(whole[:cut])
        with pytest.raises(SnapshotError, match=what) as e, pytest.warns(UserWarning, match="unchecked"):
            load_snapshot(saved)
        assert str(saved / name) in one_line(e)


class FailingFile:
    """A file whose write fails once `limit` bytes have gone through (all files of one save share the count)."""

    def __init__(self, path, budget: dict, code: int):
        self.file, self.budget, self.code = open(path, "wb"), budget, code  # noqa: SIM115

    def write(self, data) -> int:
        n = len(memoryview(data).cast("B"))
        if n > self.budget["left"]:
            self.file.write(memoryview(data).cast("B")[: self.budget["left"]])
            self.budget["left"] = 0
            raise OSError(self.code, os.strerror(self.code))
        self.budget["left"] -= n
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_writes_failing_at_random_offsets_never_lose_the_previous_snapshot(tmp_path, monkeypatch):
    model, state = model_and_state(1)
    save_snapshot(tmp_path / "last_snapshot", model, CFG, state)
    save_snapshot(tmp_path / "snapshot_1", model, CFG, state)
    total = sum(p.stat().st_size for p in (tmp_path / "snapshot_1").iterdir())
    rng = random.Random(0)
    new_model = model_and_state(2)[0]
    for trial in range(50):
        budget = {"left": rng.randrange(total)}
        code = errno.ENOSPC if trial % 2 else errno.EIO
        monkeypatch.setattr(atomic, "open_for_write", lambda p, b=budget, c=code: FailingFile(p, b, c))
        target = "last_snapshot" if trial % 3 == 0 else f"snapshot_{trial + 2}"
        with pytest.raises(DiskFullError if code == errno.ENOSPC else OutputError) as e:
            save_snapshot(tmp_path / target, new_model, CFG, {**state, "step": 2})
        text = one_line(e)
        if code == errno.ENOSPC:
            assert str(tmp_path) in text and "needed" in text and "free" in text and "partial copy was removed" in text
        assert sorted(p.name for p in tmp_path.iterdir()) == ["last_snapshot", "snapshot_1"], trial
        assert load_snapshot(tmp_path / "last_snapshot")[2]["step"] == 1
        assert latest_snapshot(tmp_path).name == "snapshot_1"
    monkeypatch.undo()
    save_snapshot(tmp_path / "last_snapshot", model, CFG, {**state, "step": 3})  # and a whole save replaces it
    assert load_snapshot(tmp_path / "last_snapshot")[2]["step"] == 3


def test_a_full_disk_is_refused_before_writing(tmp_path, monkeypatch):
    model, state = model_and_state(1)
    monkeypatch.setattr(atomic, "free_bytes", lambda d: 1000)
    with pytest.raises(DiskFullError, match=r"not enough space in .* needs [\d,]+ bytes .* 1,000 bytes .* free") as e:
        save_snapshot(tmp_path / "snapshot_5", model, CFG, state)
    one_line(e)
    assert list(tmp_path.iterdir()) == []


def test_a_real_full_tmpfs(tmp_path):
    """20 MiB of tmpfs, where this machine lets a test mount one (root in a container that allows it)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); the patched writes cover it")
    try:
        (mnt / "filler").write_bytes(b"\0" * (19 << 20))
        model, state = model_and_state(1)
        with pytest.raises(DiskFullError):
            save_snapshot(mnt / "snapshot_1", BertForPreTraining(CFG), CFG, {**state, "pad": torch.zeros(1 << 20)})
        assert sorted(p.name for p in mnt.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


KILLED_SAVER = """
import sys, torch
from bertkit.model.config import BertConfig
from bertkit.model.bert import BertForPreTraining
from bertkit.checkpoint.snapshot import save_snapshot
cfg = BertConfig(vocab_size=2000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
model = BertForPreTraining(cfg)
for i in range(1, 10**6):
    save_snapshot(sys.argv[1] + "/last_snapshot", model, cfg, {"step": i, "pad": torch.zeros(1 << 20)})
    if i == 1:
        print("ready", flush=True)
"""


def test_kill_9_during_saves_leaves_a_loadable_snapshot(tmp_path):
    rng = random.Random(1)
    dirs = [tmp_path / str(k) for k in range(3)]  # three savers at once: one torch import's wait, not three
    procs = [subprocess.Popen([sys.executable, "-c", KILLED_SAVER, str(d)], stdout=subprocess.PIPE, text=True)
             for d in dirs]  # fmt: skip
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        time.sleep(rng.uniform(0.05, 0.4))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        p.stdout.close()
    for d in dirs:
        check_writable(str(d))  # the next start: clears what the killed save left
        assert [p.name for p in d.iterdir()] == ["last_snapshot"]
        assert load_snapshot(d / "last_snapshot")[2]["step"] >= 1


def test_remove_stale_only_touches_this_hosts_dead_writers(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    host = atomic._host()
    mine = tmp_path / f".snapshot_3.tmp-{host}-{pid}"
    other_host = tmp_path / f".snapshot_3.tmp-otherhost-{pid}"
    alive = tmp_path / f".snapshot_4.tmp-{host}-{os.getppid()}"
    aside = tmp_path / f".last_snapshot.old-{host}-{pid}"  # killed between the two renames: the previous copy
    user = tmp_path / "snapshot_3.tmp-notes"
    for p in (mine, other_host, alive, aside, user):
        p.mkdir()
    assert sorted(remove_stale(tmp_path)) == sorted([mine, aside])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["last_snapshot", other_host.name, alive.name, user.name]
    )


def test_atomic_output_file_and_overwrite(tmp_path):
    out = tmp_path / "part-0"
    with atomic_output(out) as tmp:
        assert tmp == temp_name(out) and tmp.name.startswith(".part-0.tmp-")
        tmp.write_bytes(b"one")
    with pytest.raises(OutputError, match="exists; pass --force"):
        with atomic_output(out, overwrite=False):
            pass
    with pytest.raises(RuntimeError), atomic_output(out) as tmp:
        tmp.write_bytes(b"two")
        raise RuntimeError
    assert out.read_bytes() == b"one" and sorted(tmp_path.iterdir()) == [out]
    with atomic_output(out) as tmp:  # a directory where a file was, and back
        tmp.mkdir()
        (tmp / "a").write_bytes(b"a")
    assert (out / "a").read_bytes() == b"a"
    with atomic_output(out) as tmp:
        tmp.write_bytes(b"three")
    assert out.read_bytes() == b"three" and sorted(tmp_path.iterdir()) == [out]


def test_compare_flags_refuses_sizes_and_warns_on_rates():
    from bertkit.checkpoint.snapshot import resume_rules
    from bertkit.tasks.squad.config import SquadConfig

    rules = resume_rules(SquadConfig)  # declared on the config fields: metadata["resume"]

    def compare_flags(saved, now):
        return compare(saved, now, rules)

    saved = {"num_hidden_layers": 2, "learning_rate": 1e-4, "warmup_batches": 10, "seed": 1, "iter_num": 100,
             "gpu_num_per_node": 1, "node_num": 1, "log_dir": "a"}  # fmt: skip
    assert compare_flags(saved, {**saved, "log_dir": "b"}) == []
    # a flag the run derives (not given: None) is not a change: the same command resumed warns of nothing
    assert compare_flags({**saved, "warmup_batches": 40}, {**saved, "warmup_batches": None}) == []
    lines = compare_flags(saved, {**saved, "learning_rate": 5e-5, "iter_num": 200})
    assert lines == [
        "warning: --resume with --learning_rate 5e-05 (the snapshot's run: 0.0001): this command line's value is "
        "used from here on",
        "warning: --resume with --iter_num 200 (the snapshot's run: 100): this command line's value is used from "
        "here on",
    ]
    with pytest.raises(ValueError, match=r"--num_hidden_layers 4 \(the snapshot's run: 2\).*2 processes"):
        compare_flags(saved, {**saved, "num_hidden_layers": 4, "gpu_num_per_node": 2})
    assert compare_flags({**saved, "bert_config_file": "c.json"}, {**saved, "num_hidden_layers": 4}) == []
    assert compare_flags({**saved, "hidden_dropout_prob": 0.1}, {**saved, "hidden_dropout_prob": 0.0}) == [
        "warning: --resume with --hidden_dropout_prob 0.0 (the snapshot's run: 0.1): the snapshot's value is used "
        "(its bert_config.json)"
    ]


def test_resume_rules_are_declared_on_the_fields_and_inherited_by_a_redeclaration():
    from bertkit.checkpoint.snapshot import resume_rules
    from bertkit.tasks.glue.task import ClassifyConfig
    from bertkit.tasks.squad.config import SquadConfig

    squad, glue = resume_rules(SquadConfig), resume_rules(ClassifyConfig)
    assert squad["learning_rate"] == glue["learning_rate"] == ("warned", False)  # redeclared: the base's rule holds
    assert squad["num_hidden_layers"] == ("refused", True) and squad["hidden_dropout_prob"] == ("snapshot", True)
    assert squad["max_seq_length"] == glue["max_seq_length"] == glue["do_lower_case"] == ("refused", False)
    assert "log_dir" not in squad  # not declared: free to change
