"""The runner with many processes, as training is really run: `cmd > log 2>&1`, signals, kill -9, resume, two nodes.

One interrupted-and-resumed 2-process SQuAD run (dropout on; the ranks' batches have different shapes because
padding columns are cut per batch) is shared by the tests of stopping and resuming.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bertkit.cli import main
from bertkit.model.config import BertConfig

BASE = [sys.executable, "-m", "bertkit"]
ITERS = 30
ND = (
    "Architecturally, the school has a Catholic character. Atop the Main Building's gold dome is a golden statue of "
    "the Virgin Mary. Immediately in front of the Main Building and facing it, is a copper statue of Christ with arms "
    'upraised with the legend "Venite Ad Me Omnes". Next to the Main Building is the Basilica of the Sacred Heart.'
)
QUESTIONS = [
    ("What sits on top of the Main Building?", "a golden statue of the Virgin Mary"),
    ("What is in front of the Main Building?", "a copper statue of Christ"),
    ("What is next to the Main Building?", "the Basilica of the Sacred Heart"),
    ("What character does the school have?", "a Catholic character"),
    ("What is the legend on the statue?", "Venite Ad Me Omnes"),
    ("What colour is the dome?", "gold"),
]


def free_port() -> int:
    with socket.socket() as s:  # a free port, so parallel runs do not collide on the default 29500
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_inputs(d: Path) -> tuple[Path, Path]:
    """Six questions (windows of different lengths at stride 16) and a tiny config with dropout 0.1."""
    qas = [{"answers": [{"answer_start": ND.index(a), "text": a}], "question": q, "id": f"q{i}"}
           for i, (q, a) in enumerate(QUESTIONS)]  # fmt: skip
    data = {"data": [{"title": "ND", "paragraphs": [{"context": ND, "qas": qas}]}], "version": "1.1"}
    (d / "train.json").write_text(json.dumps(data))
    BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               max_position_embeddings=64).to_json_file(d / "bert_config.json")  # fmt: skip
    return d / "train.json", d / "bert_config.json"


def squad_argv(d: Path, out: Path, gpus: int = 2, **kw) -> list[str]:
    flags = {
        "do_train": True, "train_file": d / "train.json", "bert_config_file": d / "bert_config.json",
        "max_seq_length": 48, "doc_stride": 16, "max_query_length": 16, "batch_size_per_device": 2,
        "learning_rate": 1e-3, "iter_num": ITERS, "warmup_batches": 2, "loss_print_every_n_iter": 1,
        "stop_check_every_n_iter": 4, "output_dir": out, "model_save_dir": out / "save", "log_dir": out / "log",
        "save_last_snapshot": True, "device": "cpu", "gpu_num_per_node": gpus, "master_port": free_port(),
        "model_save_every_n_iter": 10**6, "seed": 3,
    }  # fmt: skip
    flags.update(kw)
    return ["squad", *(f"--{k}={v}" for k, v in flags.items() if v is not None)]


def metrics(out: Path) -> list[dict]:
    path = out / "log" / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if '"total_loss"' in x]


def workers(launcher: subprocess.Popen) -> list[int]:
    """The launched worker processes (spawned children of the launcher)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = int(re.search(r"PPid:\s+(\d+)", status.read_text()).group(1))
            cmdline = (status.parent / "cmdline").read_bytes()
        except (OSError, AttributeError):
            continue
        if ppid == launcher.pid and b"spawn_main" in cmdline:
            found.append(int(status.parent.name))
    return sorted(found)


def start(argv: list[str], log: Path, **kw) -> subprocess.Popen:
    """`bertkit ... > log 2>&1`, as training is run."""
    with open(log, "w") as fh:
        return subprocess.Popen([*BASE, *argv], stdout=fh, stderr=subprocess.STDOUT, **kw)


def wait_for_step(proc: subprocess.Popen, out: Path, step: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics(out) and metrics(out)[-1]["step"] >= step and len(workers(proc)) == 2:
            return
        assert proc.poll() is None, f"ended early with {proc.returncode}"
        time.sleep(0.01)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def run(argv: list[str], log: Path, timeout: float = 300) -> tuple[int, str]:
    proc = start(argv, log)
    return proc.wait(timeout=timeout), log.read_text()


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A straight 2-process run; the same run stopped by SIGTERM to one rank; then resumed with --resume latest."""
    d = tmp_path_factory.mktemp("runner")
    write_inputs(d)
    straight_rc, straight_log = run(squad_argv(d, d / "a"), d / "a.log")
    (d / "b").mkdir()
    proc = start(squad_argv(d, d / "b"), d / "b.log")
    wait_for_step(proc, d / "b", 3)
    t_signal = time.monotonic()
    os.kill(workers(proc)[-1], signal.SIGTERM)  # one rank only
    stopped_rc = proc.wait(timeout=120)
    stop_seconds = time.monotonic() - t_signal
    stopped_log = (d / "b.log").read_text()
    resumed_rc, resumed_log = run(squad_argv(d, d / "b", resume="latest"), d / "b-resumed.log")
    return {"dir": d, "straight": (straight_rc, straight_log), "stopped": (stopped_rc, stopped_log),
            "resumed": (resumed_rc, resumed_log), "stop_seconds": stop_seconds}  # fmt: skip


def test_a_signal_to_one_rank_stops_every_rank_with_one_snapshot(interrupted):
    rc, log = interrupted["stopped"]
    assert interrupted["straight"][0] == 0, interrupted["straight"][1][-3000:]
    assert rc == 128 + signal.SIGTERM, log[-3000:]
    assert interrupted["stop_seconds"] < 60
    lines = [x for x in log.splitlines() if x.startswith("stopped by signal")]
    assert len(lines) == 1 and "SIGTERM" in lines[0] and "--resume" in lines[0], log[-3000:]
    snap = Path(re.search(r"snapshot (\S+);", lines[0]).group(1))
    assert snap.name.startswith("snapshot_") and int(snap.name[9:]) % 4 == 0 and int(snap.name[9:]) < ITERS
    assert "Traceback" not in log
    assert re.search(r"^iter \d+, total_loss: ", log, re.M)  # redirected: the seed's lines start lines


def test_resume_with_two_processes_continues_bit_for_bit(interrupted):
    d = interrupted["dir"]
    rc, log = interrupted["resumed"]
    assert rc == 0, log[-3000:]
    assert "--resume latest: " in log
    straight, resumed = metrics(d / "a"), metrics(d / "b")
    assert [r["step"] for r in resumed] == list(range(1, ITERS + 1))  # each step once after the resume
    for a, b in zip(straight, resumed, strict=True):
        assert (a["step"], a["total_loss"], a["grad_norm"]) == (b["step"], b["total_loss"], b["grad_norm"])
    wa = load_file(d / "a" / "save" / "last_snapshot" / "model.safetensors")
    wb = load_file(d / "b" / "save" / "last_snapshot" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_ranks_draw_their_own_dropout_masks(interrupted):
    """The ranks' RNG states in a snapshot differ (each rank its own seed), and dropout really ran."""
    d = interrupted["dir"]
    state = torch.load(d / "b" / "save" / "last_snapshot" / "train_state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    assert not torch.equal(state["ranks"][0]["rng"]["torch"], state["ranks"][1]["rng"]["torch"])


def test_resume_with_another_world_size_is_refused(interrupted, capsys):
    d = interrupted["dir"]
    snap = sorted((d / "b" / "save").glob("snapshot_*"))[0]
    assert main(squad_argv(d, d / "c", gpus=1, resume=snap)) == 2
    err = capsys.readouterr().err
    assert "written by 2 process(es)" in err and "not 1" in err and len(err.strip().splitlines()) == 1


def test_user_error_with_two_processes_is_said_once_before_any_worker_starts(tmp_path, capsys):
    write_inputs(tmp_path)
    argv = squad_argv(tmp_path, tmp_path / "o", train_file=tmp_path / "missing.json")
    t0 = time.monotonic()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("missing.json") == 1 and time.monotonic() - t0 < 10, err


def test_sigterm_to_the_launcher_alone_reaches_every_rank(tmp_path):
    """A scheduler signals the launcher only: the elastic agent forwards it, the ranks snapshot and exit 143."""
    write_inputs(tmp_path)
    proc = start(squad_argv(tmp_path, tmp_path / "o", iter_num=10**6), tmp_path / "o.log")
    wait_for_step(proc, tmp_path / "o", 3)
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=120)
    log = (tmp_path / "o.log").read_text()
    assert rc == 128 + signal.SIGTERM, log[-3000:]
    assert log.count("stopped by signal 15 (SIGTERM)") == 1 and "Traceback" not in log, log[-3000:]
    assert list((tmp_path / "o" / "save").glob("snapshot_*/manifest.json"))


def test_an_interrupted_stage_stops_the_demo(tmp_path, monkeypatch, capsys):
    """The demo chains commands in one process: a stage stopped by a signal ends the demo with 128 + signal."""
    import bertkit.cli
    from bertkit.runtime.dist import Stopped

    calls = []

    def stopped(argv):
        calls.append(argv[0])
        raise Stopped(signal.SIGINT, "")

    monkeypatch.setattr(bertkit.cli, "invoke", stopped)
    assert main(["demo", "--quick", f"--output_dir={tmp_path / 'demo'}"]) == 128 + signal.SIGINT
    assert calls == ["create-pretraining-data"]


def test_ctrl_c_to_the_process_group_ends_in_a_snapshot_and_130(tmp_path):
    write_inputs(tmp_path)
    proc = start(squad_argv(tmp_path, tmp_path / "o"), tmp_path / "o.log", start_new_session=True)
    wait_for_step(proc, tmp_path / "o", 3)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the launcher and every worker get it
    rc = proc.wait(timeout=120)
    log = (tmp_path / "o.log").read_text()
    assert rc == 128 + signal.SIGINT, log[-3000:]
    assert log.count("stopped by signal 2 (SIGINT)") == 1 and "Traceback" not in log, log[-3000:]
    assert list((tmp_path / "o" / "save").glob("snapshot_*/train_state.pt"))


def test_a_killed_rank_ends_every_process_with_one_line_naming_it(tmp_path):
    write_inputs(tmp_path)
    proc = start(squad_argv(tmp_path, tmp_path / "o", iter_num=10**6), tmp_path / "o.log")
    wait_for_step(proc, tmp_path / "o", 2)
    ranks = workers(proc)
    t0 = time.monotonic()
    os.kill(ranks[-1], signal.SIGKILL)
    rc = proc.wait(timeout=90)
    assert time.monotonic() - t0 < 60
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in ranks) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in ranks)
    log = (tmp_path / "o.log").read_text()
    assert rc != 0
    errors = [x for x in log.splitlines() if x.startswith("bertkit squad: error:")]
    assert len(errors) == 1 and re.search(r"rank \d was killed( by SIGKILL)?", errors[0]), log[-3000:]
    assert log.count("Traceback") == 0, log[-3000:]


def test_one_process_stopped_by_sigterm_exits_143(tmp_path):
    write_inputs(tmp_path)
    proc = start(squad_argv(tmp_path, tmp_path / "o", gpus=1, iter_num=10**6), tmp_path / "o.log")
    deadline = time.monotonic() + 120
    while not metrics(tmp_path / "o") and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    log = (tmp_path / "o.log").read_text()
    assert "stopped by signal 15 (SIGTERM)" in log and "Traceback" not in log


# --- two nodes -------------------------------------------------------------------------------------------------


def _netns(n: int) -> list[str] | None:
    """Two network namespaces joined by a veth pair (10.77.N.1 / 10.77.N.2), or None where they cannot be made."""
    names = [f"bk{os.getpid() % 10000}n{n}{i}" for i in range(2)]
    cmds = [
        *(["ip", "netns", "add", ns] for ns in names),
        ["ip", "link", "add", f"{names[0]}v", "type", "veth", "peer", "name", f"{names[1]}v"],
        *(["ip", "link", "set", f"{ns}v", "netns", ns] for ns in names),
        *(["ip", "-n", ns, "addr", "add", f"10.77.{n}.{i + 1}/24", "dev", f"{ns}v"] for i, ns in enumerate(names)),
        *(["ip", "-n", ns, "link", "set", f"{ns}v", "up"] for ns in names),
        *(["ip", "-n", ns, "link", "set", "lo", "up"] for ns in names),
    ]
    for cmd in cmds:
        try:
            ok = subprocess.run(cmd, capture_output=True).returncode == 0
        except OSError:
            ok = False
        if not ok:
            _drop_netns(names)
            return None
    return names


def _drop_netns(names: list[str]) -> None:
    for ns in names:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_two_nodes_equal_one_process_with_two_accumulation_steps(tmp_path):
    """Two launchers, one process each, as two machines (--node_num 2): the losses of one process with two
    accumulation steps. In two network namespaces when they can be made (each node finds its own rank from the
    address it can bind); over loopback otherwise."""
    from tasks.test_pretrain import make_ofrecord_dir, seed_flags  # tests/ is on sys.path (its conftest)

    data = make_ofrecord_dir(tmp_path / "data")
    nodrop = {"attention_probs_dropout_prob": 0.0, "hidden_dropout_prob": 0.0, "iter_num": 6}
    names = _netns(1)
    try:
        port = free_port()
        procs = []
        for rank in range(2):
            if names:
                hosts = "10.77.1.1,10.77.1.2"
                prefix = ["ip", "netns", "exec", names[rank], "env", f"GLOO_SOCKET_IFNAME={names[rank]}v"]
                extra = {}
            else:
                hosts, prefix, extra = "127.0.0.1,127.0.0.1", [], {"node_rank": rank}
            argv = seed_flags(data, tmp_path / f"node{rank}", node_num=2, node_list=hosts, master_port=port,
                              **nodrop, **extra)  # fmt: skip
            with open(tmp_path / f"node{rank}.log", "w") as fh:
                procs.append(subprocess.Popen([*prefix, *BASE, *argv], stdout=fh, stderr=subprocess.STDOUT))
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        if names:
            _drop_netns(names)
    logs = [(tmp_path / f"node{r}.log").read_text() for r in range(2)]
    assert codes == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    one = subprocess.run([*BASE, *seed_flags(data, tmp_path / "one", num_accumulation_steps=2, **nodrop)],
                         capture_output=True, text=True)  # fmt: skip
    assert one.returncode == 0, one.stderr
    from tasks.test_pretrain import metrics as seed_metrics

    m2, m1 = seed_metrics(tmp_path / "node0"), seed_metrics(tmp_path / "one")
    assert len(m1) == len(m2) == 6
    for r1, r2 in zip(m1, m2, strict=True):
        for k in ("total_loss", "mlm_loss", "nsp_loss"):
            assert abs(r1[k] - r2[k]) < 1e-5, (r1["step"], k, r1[k], r2[k])


def test_node_rank_is_found_by_binding_each_nodes_own_address():
    """In two namespaces each node can bind only its own address, so each finds its own place in --node_list."""
    names = _netns(2)
    if not names:
        pytest.skip("network namespaces cannot be made here (needs root and iproute2)")
    try:
        code = "from bertkit.runtime import dist; print(dist.find_node_rank(['10.77.2.1', '10.77.2.2']))"
        found = [subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True,
                                text=True).stdout.strip() for ns in names]  # fmt: skip
    finally:
        _drop_netns(names)
    assert found == ["0", "1"]


# --- no silent traps (issue 29): a finished run, a checkpoint's own size, a GPU asked for and absent --------------


def tiny_pretrain(d: Path, out: Path, **kw) -> list[str]:
    """A 6-step pretraining run on 8 random records (seq 16, vocab 99), in one process."""
    from bertkit.data.records import write_ofrecord
    from bertkit.tasks.pretrain.task import random_batch

    data = d / "data"
    if not data.exists():
        data.mkdir(parents=True)
        b = random_batch(8, 16, 3, 99, generator=torch.Generator().manual_seed(0))
        write_ofrecord(data / "part-0", [
            {k: v[i].numpy().astype("float32" if k == "masked_lm_weights" else "int32").reshape(-1)
             for k, v in b.items()} for i in range(8)
        ])  # fmt: skip
    flags = {
        "data_dir": data, "data_part_num": 1, "batch_size_per_device": 4, "iter_num": 6, "warmup_batches": 1,
        "seq_length": 16, "max_predictions_per_seq": 3, "num_hidden_layers": 1, "num_attention_heads": 2,
        "hidden_size_per_head": 8, "vocab_size": 99, "max_position_embeddings": 32, "loss_print_every_n_iter": 3,
        "model_save_dir": out / "save", "log_dir": out / "log", "save_last_snapshot": True, "device": "cpu",
        "model_save_every_n_iter": 4,
    }  # fmt: skip
    flags.update(kw)
    return ["pretrain", *(f"--{k}={v}" for k, v in flags.items())]


def test_resume_latest_on_a_finished_run_says_so_and_trains_nothing(tmp_path, capsys):
    assert main(tiny_pretrain(tmp_path, tmp_path / "o")) == 0
    before = (tmp_path / "o" / "log" / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(tiny_pretrain(tmp_path, tmp_path / "o", resume="latest")) == 0
    out = capsys.readouterr().out
    assert "is finished" in out and "last_snapshot at iter 6 of 6" in out and "nothing to train" in out, out
    assert "iter " not in out.split("nothing to train")[1] and "Saving model" not in out
    assert (tmp_path / "o" / "log" / "metrics.jsonl").read_text() == before  # not a step redone
    # The same command without --resume: refused, and not pointed at a retrain.
    assert main(tiny_pretrain(tmp_path, tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "already holds a finished run (last_snapshot at iter 6)" in err and "another --model_save_dir" in err
    # A larger --iter_num continues from last_snapshot (newer than snapshot_4), not from snapshot_4.
    assert main(tiny_pretrain(tmp_path, tmp_path / "o", resume="latest", iter_num=8)) == 0
    out = capsys.readouterr().out
    assert f"--resume latest: {tmp_path / 'o' / 'save' / 'last_snapshot'}" in out and "at iter 6." in out


def test_pretrain_from_a_checkpoint_takes_its_config_not_the_size_flags(tmp_path, capsys):
    assert main(tiny_pretrain(tmp_path, tmp_path / "a", num_hidden_layers=2)) == 0
    capsys.readouterr()
    # The size flags say 24 layers (the defaults); the checkpoint's bert_config.json says 2: its config is used.
    argv = [a for a in tiny_pretrain(tmp_path, tmp_path / "b") if not a.startswith("--num_hidden_layers")]
    assert main([*argv, f"--model_load_dir={tmp_path / 'a' / 'save' / 'last_snapshot'}"]) == 0
    out = capsys.readouterr().out
    assert "the checkpoint's config; the size flags above are not used" in out
    assert json.loads((tmp_path / "b" / "save" / "last_snapshot" / "bert_config.json").read_text())[
        "num_hidden_layers"] == 2  # fmt: skip
    assert main([*argv, f"--model_load_dir={tmp_path / 'nothing'}"]) == 2
    assert f"--model_load_dir {tmp_path / 'nothing'}: no such file or directory" in capsys.readouterr().err


def test_gpus_asked_for_on_a_machine_without_one_is_said_in_one_line(monkeypatch, capsys):
    from bertkit.tasks.pretrain.task import PretrainConfig
    from bertkit.train import runner

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runner, "_launch", lambda cfg, body: None)  # the line comes before any process starts
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    for n in (2, 4):
        runner.run(PretrainConfig.from_flags(data_dir="x", gpu_num_per_node=n), body=None)
        out = capsys.readouterr().out
        assert out == f"--gpu_num_per_node {n}: no GPU on this machine; {n} CPU processes are used instead\n"
    runner.run(
        PretrainConfig.from_flags(data_dir="x", gpu_num_per_node=2, device="cpu"), body=None
    )  # asked for the CPU
    assert capsys.readouterr().out == ""


def test_squad_into_a_pretraining_folder_keeps_it_and_says_where_its_snapshot_goes(tmp_path, capsys, monkeypatch):
    """The tutorial's run_squad.py line writes into the folder its pretraining line used (and no --output_dir: nothing
    is written in the working folder, the windows' cache included)."""
    monkeypatch.chdir(tmp_path)
    assert main(tiny_pretrain(tmp_path, tmp_path / "o", model_save_dir=tmp_path / "of", log_dir=tmp_path / "of")) == 0
    pretrained = (tmp_path / "of" / "last_snapshot" / "model.safetensors").read_bytes()
    capsys.readouterr()
    write_inputs(tmp_path)
    argv = squad_argv(tmp_path, tmp_path / "squad", gpus=1, iter_num=2, model_save_dir=tmp_path / "of",
                      log_dir=tmp_path / "of", output_dir=None)  # fmt: skip
    for n, sub in ((1, "squad"), (2, "squad-2")):  # a second SQuAD run goes beside the first, too
        assert main(argv) == 0, n
        out = capsys.readouterr().out
        assert f"--model_save_dir and --log_dir {tmp_path / 'of'} hold another run's " in out
        assert f"kept; this run's snapshots go beside them, in {tmp_path / 'of' / sub}" in out
        assert (tmp_path / "of" / sub / "last_snapshot" / "model.safetensors").is_file()
        assert list((tmp_path / "of" / sub / "cache").glob("squad-windows-*.npz"))
    assert not (tmp_path / "squad_output").exists()
    assert (tmp_path / "of" / "last_snapshot" / "model.safetensors").read_bytes() == pretrained
    assert '"mlm_loss"' in (tmp_path / "of" / "metrics.jsonl").read_text()  # pretraining's log is kept too
