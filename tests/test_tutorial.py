"""docs/tutorial.md, run as written: every command line of OneFlow's BERT tutorial in order, in one folder.

The page's ```bash blocks are the script: `bertkit ...` lines run in this process (main), `cd` moves the test,
the other shell lines (cp, cat, xxd) run in bash; downloads are replaced by the test data put where they would land.
Sizes are made tiny (SMALL) so that the whole sequence takes seconds; every other flag is the page's.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bertkit.cli import main

PAGE = Path(__file__).parents[1] / "docs" / "tutorial.md"

# flag -> {the page's value: the test's}: 2 layers of BERT-Tiny's width (its checkpoint is the test's Google model),
# 128-token windows, a few iterations, 2 processes for the page's 4
SMALL = {
    "--num_hidden_layers": {"12": "2"},
    "--num_attention_heads": {"12": "2"},
    "--seq_length": {"384": "128"},
    "--max_seq_length": {"384": "128"},
    "--doc_stride": {"128": "64"},
    "--iter_num": {"50": "4", "8310": "6"},
    "--batch_size_per_device": {"8": "2"},
    "--gpu_num_per_node": {"4": "2"},
}


def commands(page: str) -> list[str]:
    """The page's shell commands in order: continuation lines joined, a heredoc kept with its command."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", page, flags=re.S):
        lines, i = block.splitlines(), 0
        while i < len(lines):
            text = lines[i]
            while text.endswith("\\"):
                i += 1
                text = text[:-1] + " " + lines[i].strip()
            if "<<ONEFLOW" in text:
                while lines[i] != "ONEFLOW":
                    i += 1
                    text += "\n" + lines[i]
            if text.strip():
                out.append(text.strip())
            i += 1
    return out


def small(argv: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=")
        if not eq and flag in SMALL and i + 1 < len(argv):  # `--flag value`
            out += [flag, SMALL[flag].get(argv[i + 1], argv[i + 1])]
            i += 2
            continue
        out.append(f"{flag}={SMALL[flag].get(value, value)}" if eq and flag in SMALL else argv[i])
        i += 1
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def place_downloads(d: Path, data: Path) -> None:
    """What the page's wget/unzip lines fetch, from the test data: a small SQuAD train and dev set, Google's sample
    text, and a Google-format TF checkpoint (BERT-Tiny's shape) under the page's model name."""
    shutil.copytree(data / "tf-checkpoint-tiny", d / "uncased_L-12_H-768_A-12")
    shutil.copy(data / "text" / "google-sample_text.txt", d / "sample_text.txt")
    for name, source, paragraphs in (("train-v1.1.json", "train-v1.1-University_of_Notre_Dame.json", 6),
                                     ("dev-v1.1.json", "dev-v1.1-Super_Bowl_50.json", 2)):  # fmt: skip
        squad = json.loads((data / "squad" / source).read_text())
        squad["data"] = [{**squad["data"][0], "paragraphs": squad["data"][0]["paragraphs"][:paragraphs]}]
        (d / name).write_text(json.dumps(squad))


def test_the_tutorial_runs_in_order_as_written(shared_data, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    place_downloads(tmp_path, shared_data)
    placed = {p.name for p in tmp_path.iterdir()}
    logs = []
    for text in commands(PAGE.read_text(encoding="utf-8")):
        if text.startswith(("wget ", "unzip ")):
            continue  # placed above
        if text.startswith("cd "):
            target = Path(text[3:].strip())
            if target.name.startswith("System-Train-TrainStep-"):
                # A model OneFlow trained holds its step count here (a converted one has none): make one, so the
                # page's reset has something to reset, and check that bertkit starts at 0 either way.
                target.mkdir()
                np.array([8310], dtype=np.int64).tofile(target / "out")
            monkeypatch.chdir(target)
            continue
        if text.startswith("bertkit "):
            argv = small(shlex.split(text)[1:])
            if "--gpu_num_per_node=2" in argv:  # a free rendezvous port: other tests may hold the default
                argv.append(f"--master_port={free_port()}")
            code = main(argv)
            out = capfd.readouterr()
            logs.append(out.out + out.err)
            assert code == 0, f"{text}\n{logs[-1][-3000:]}"
            continue
        subprocess.run(["bash", "-c", text], check=True)
    assert Path.cwd() == tmp_path
    pretrain, convert, squad_init, finetune, predict, npy2json, evaluate = logs[3:]
    assert "Saving model to bert_regresssioin_test/of/last_snapshot" in pretrain
    # the SQuAD runs went beside pretraining's snapshot, and said where
    of = tmp_path / "bert_regresssioin_test" / "of"
    assert "this run's snapshots go beside them, in bert_regresssioin_test/of/squad\n" in squad_init
    assert "this run's snapshots go beside them, in bert_regresssioin_test/of/squad-2\n" in finetune
    for snap in ("last_snapshot", "squad/last_snapshot", "squad-2/last_snapshot"):
        assert (of / snap / "model.safetensors").is_file(), snap
    # the merge was read: the pretrained encoder from the OneFlow folders, the QA head from the snapshot
    assert "--gpu_num_per_node 2: no GPU on this machine; 2 CPU processes are used instead" in finetune
    assert re.search(r"OneFlow variables \(\d+\) copied over model.safetensors \(2 kept from it\)", finetune)
    assert "global_step 0)" in finetune and "average speed" in finetune
    from bertkit.checkpoint.formats import load_state

    merged = load_state(tmp_path / "squadModel")[0]
    pretrained = load_state(tmp_path / "uncased_L-12_H-768_A-12")[0]
    squad_init = load_state(of / "squad" / "last_snapshot")[0]
    assert merged["bert.layers.1.mlp.fc2.weight"].equal(pretrained["bert.layers.1.mlp.fc2.weight"])
    assert merged["qa.weight"].equal(squad_init["qa.weight"])
    assert not merged["bert.emb.word.weight"].equal(squad_init["bert.emb.word.weight"])
    assert "results saved to all_results.npy" in predict and "squad_base/predictions.json" in npy2json
    scores = json.loads(evaluate.strip().splitlines()[-1])
    assert set(scores) == {"exact_match", "f1"}
    # nothing written but the page's folders and files
    assert {p.name for p in tmp_path.iterdir()} - placed == {
        "dataset", "uncased_L-12_H-768_A-12-oneflow", "bert_regresssioin_test", "squadModel", "all_results.npy",
        "squad_base",
    }  # fmt: skip


def test_the_page_has_every_command_of_the_seed_tutorial():
    """Each `python <script>.py` of the seed's tutorial has its bertkit line here, in the seed's order."""
    order = [c.split()[1] for c in commands(PAGE.read_text(encoding="utf-8")) if c.startswith("bertkit ")]
    seed = ["pretrain", "convert", "squad", "squad", "squad-predict", "npy2json", "squad-evaluate"]
    assert [c for c in order if c in seed] == seed
    assert os.sep not in "".join(SMALL)  # (the table names flags only)


@pytest.mark.parametrize("argv, want", [
    (["--iter_num=8310", "--gpu_num_per_node", "4"], ["--iter_num=6", "--gpu_num_per_node", "2"]),
    (["--seq_length=128", "--max_seq_length", "384"], ["--seq_length=128", "--max_seq_length", "128"]),
])  # fmt: skip
def test_small_changes_sizes_only(argv, want):
    assert small(argv) == want
