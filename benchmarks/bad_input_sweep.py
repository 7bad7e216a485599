"""Run every subcommand with bad inputs, in this process, and count how each one ends.

    python benchmarks/bad_input_sweep.py [--verbose]

Each case is a command line a user could type by mistake plus the word its error must name (the user's flag or
file). A case ends as one of:

    clear      exit status 2 (or another non-zero), no traceback, one error line naming that word
    vague      a non-zero exit whose message does not name it (or several lines of it)
    traceback  an exception escaped the command
    silent     exit status 0: the mistake went unnoticed
    timeout    still working after 60 s (a mistake noticed late, if at all)

Prints a line per case and the counts. Every case runs on tiny files made in a temporary folder.

Measured for issue 15 (50 inputs; the same script against the code before it, c93057c, and after):
before 35 clear, 2 vague, 9 tracebacks, 4 silent, 8 top-level usages; after 50 clear, 0, 0, 0, 0.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import struct
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np


def make_files(d: Path) -> dict[str, str]:
    """The tiny inputs the cases use, by name."""
    squad = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "Paris is in France.", "qas": [
        {"id": "q1", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]}]}]}]}  # fmt: skip
    (d / "dev.json").write_text(json.dumps(squad))
    (d / "pred.json").write_text(json.dumps({"q1": "France"}))
    (d / "empty.json").write_text("")
    (d / "notes.txt").write_text("just some text\n")
    (d / "binary.txt").write_bytes(b"\xff\xfe\x00bad\x80\x81 text\n")
    (d / "all_results.npy").write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) + b"x" * 118)
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 2400), }"
    header += " " * (118 - len(header) - 1) + "\n"
    (d / "absurd.npy").write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())
    (d / "empty_dir").mkdir()
    (d / "bad_config.json").write_text("{not json")
    snap = d / "snapshot_1"  # a snapshot whose files are cut short
    snap.mkdir()
    (snap / "model.safetensors").write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a":')
    from bertkit.model.config import BertConfig
    from bertkit.tasks.squad.predict import RawResults

    BertConfig(vocab_size=99, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64).to_json_file(snap / "bert_config.json")  # fmt: skip
    RawResults(np.array([1]), np.zeros((1, 8), np.float32), np.zeros((1, 8), np.float32)).save(d / "results.npy")
    (snap / "train_state.pt").write_bytes(b"PK\x03\x04truncated")
    from bertkit.data.records import pretraining_features, write_ofrecord

    (d / "data").mkdir()  # valid records: each pretrain case below meets the mistake it is about
    rows = [{k: np.ones(s.length, s.dtype) for k, s in pretraining_features(16, 4).items()} for _ in range(8)]
    write_ofrecord(d / "data" / "part-0", rows)
    import shutil

    from bertkit.checkpoint.snapshot import save_snapshot
    from bertkit.model.bert import BertForQuestionAnswering

    tiny = BertConfig(vocab_size=99, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=64)  # fmt: skip
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (d / "vocab99.txt").write_text("".join(t + "\n" for t in special + [f"[unused{i}]" for i in range(94)]))
    save_snapshot(d / "tuned", BertForQuestionAnswering(tiny), tiny, {"step": 1})
    shutil.copyfile(d / "vocab99.txt", d / "tuned" / "vocab.txt")  # as a fine-tuned snapshot carries its vocabulary
    shutil.copytree(d / "tuned", d / "flipped")
    weights = bytearray((d / "flipped" / "model.safetensors").read_bytes())
    weights[-5] ^= 4
    (d / "flipped" / "model.safetensors").write_bytes(bytes(weights))
    (d / "log").mkdir()
    (d / "log" / "metrics.jsonl").write_text("{bad\n")
    (d / "vocab_cased.txt").write_text("".join(t + "\n" for t in
                                               ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Paris", "paris",
                                                "is", "in", "France", "?", "."]))  # fmt: skip
    return {"d": str(d)}


PRE = ["--num_hidden_layers=1", "--num_attention_heads=2", "--hidden_size_per_head=8", "--vocab_size=99",
       "--seq_length=16", "--max_predictions_per_seq=4", "--data_part_num=1"]  # fmt: skip
TINY = ["--num_hidden_layers=1", "--num_attention_heads=2", "--hidden_size_per_head=8", "--vocab_size=99",
        "--max_position_embeddings=64", "--max_seq_length=64", "--max_query_length=16", "--doc_stride=32"]  # fmt: skip


def cases(d: str) -> list[tuple[str, list[str], str]]:
    """(what, argv, the word the error must name)."""
    return [
        ("evaluate: missing data file", ["squad-evaluate", f"{d}/missing.json", f"{d}/pred.json"], "missing.json"),
        (
            "evaluate: npy as predictions",
            ["squad-evaluate", f"{d}/dev.json", f"{d}/all_results.npy"],
            "all_results.npy",
        ),
        ("evaluate: missing predictions", ["squad-evaluate", f"{d}/dev.json", f"{d}/nope.json"], "nope.json"),
        ("evaluate: empty data file", ["squad-evaluate", f"{d}/empty.json", f"{d}/pred.json"], "empty.json"),
        ("evaluate: text as data", ["squad-evaluate", f"{d}/notes.txt", f"{d}/pred.json"], "notes.txt"),
        ("evaluate: no arguments", ["squad-evaluate"], "data_file"),
        (
            "evaluate: missing na_prob_file",
            [
                "squad-evaluate",
                f"{d}/dev.json",
                f"{d}/pred.json",
                "--squad_version",
                "2.0",
                "--na_prob_file",
                f"{d}/na.json",
            ],
            "na.json",
        ),  # fmt: skip
        ("pretrain: no data", ["pretrain", *PRE], "--data_dir"),
        ("pretrain: missing data dir", ["pretrain", f"--data_dir={d}/nodata", *PRE], "--data_dir"),
        ("pretrain: empty data dir", ["pretrain", f"--data_dir={d}/empty_dir", *PRE], "--data_dir"),
        ("pretrain: text as data", ["pretrain", f"--data_dir={d}/notes.txt", *PRE], "notes.txt"),
        ("pretrain: iter_num 0", ["pretrain", f"--data_dir={d}/data", "--iter_num=0"], "--iter_num"),
        ("pretrain: learning rate not a number", ["pretrain", "--learning_rate=abc"], "--learning_rate"),
        ("pretrain: misspelled flag", ["pretrain", f"--data_dir={d}/x", "--iter_nun=3"], "--iter_num"),
        ("pretrain: missing resume", ["pretrain", f"--data_dir={d}/data", f"--resume={d}/snap", *PRE], "snap"),
        (
            "pretrain: damaged snapshot",
            ["pretrain", f"--data_dir={d}/data", f"--resume={d}/snapshot_1", *PRE],
            "snapshot_1",
        ),  # fmt: skip
        (
            "pretrain: missing bert_config_file",
            ["pretrain", f"--data_dir={d}/data", f"--bert_config_file={d}/cfg.json", *PRE],
            "cfg.json",
        ),  # fmt: skip
        (
            "pretrain: bad bert_config_file",
            ["pretrain", f"--data_dir={d}/data", f"--bert_config_file={d}/bad_config.json", *PRE],
            "bad_config.json",
        ),  # fmt: skip
        (
            "pretrain: missing model_load_dir",
            ["pretrain", f"--data_dir={d}/data", f"--model_load_dir={d}/ckpt", *PRE],
            "ckpt",
        ),  # fmt: skip
        ("squad-predict: nothing to predict", ["squad-predict", *TINY], "--predict_file"),
        (
            "squad-predict: missing predict_file",
            ["squad-predict", f"--predict_file={d}/dev2.json", *TINY, f"--output_dir={d}/o1"],
            "dev2.json",
        ),  # fmt: skip
        (
            "squad-predict: text as predict_file",
            ["squad-predict", f"--predict_file={d}/notes.txt", *TINY, f"--output_dir={d}/o2"],
            "notes.txt",
        ),  # fmt: skip
        (
            "squad-predict: missing vocab_file",
            ["squad-predict", f"--predict_file={d}/dev.json", *TINY, f"--vocab_file={d}/v.txt", f"--output_dir={d}/o3"],
            "v.txt",
        ),  # fmt: skip
        (
            "squad-predict: missing checkpoint",
            [
                "squad-predict",
                f"--predict_file={d}/dev.json",
                *TINY,
                f"--init_checkpoint={d}/ckpt",
                f"--output_dir={d}/o4",
            ],
            "ckpt",
        ),  # fmt: skip
        (
            "squad-predict: empty checkpoint dir",
            [
                "squad-predict",
                f"--predict_file={d}/dev.json",
                *TINY,
                f"--init_checkpoint={d}/empty_dir",
                f"--output_dir={d}/o5",
            ],
            "empty_dir",
        ),  # fmt: skip
        (
            "squad-predict: cased vocab, lower case",
            [
                "squad-predict",
                f"--predict_file={d}/dev.json",
                *TINY,
                f"--vocab_file={d}/vocab_cased.txt",
                "--do_lower_case=True",
                f"--output_dir={d}/o6",
            ],
            "--do_lower_case",
        ),  # fmt: skip
        (
            "squad: missing train_file",
            ["squad", "--do_train", f"--train_file={d}/train.json", *TINY, f"--output_dir={d}/o7"],
            "train.json",
        ),  # fmt: skip
        (
            "squad: do_predict without a file",
            ["squad", "--do_predict", "--do_train=False", *TINY, f"--output_dir={d}/o8"],
            "--predict_file",
        ),  # fmt: skip
        (
            "squad-predict: a flipped bit in the snapshot",
            [
                "squad-predict",
                f"--predict_file={d}/dev.json",
                *TINY,
                f"--init_checkpoint={d}/flipped",
                f"--output_dir={d}/o13",
            ],
            "model.safetensors",
        ),  # fmt: skip
        (
            "squad-predict: another vocabulary than the snapshot's",
            [
                "squad-predict",
                f"--predict_file={d}/dev.json",
                *TINY,
                f"--init_checkpoint={d}/tuned",
                f"--vocab_file={d}/vocab_cased.txt",
                f"--output_dir={d}/o14",
            ],
            "--vocab_file",
        ),  # fmt: skip
        (
            "create-pretraining-data: cased vocab lowercased",
            [
                "create-pretraining-data",
                f"--input_file={d}/notes.txt",
                f"--vocab_file={d}/vocab_cased.txt",
                "--do_lower_case=True",
                f"--output_file={d}/p6",
            ],
            "--do_lower_case",
        ),  # fmt: skip
        (
            "npy2json: missing results",
            ["npy2json", f"--all_results_file={d}/r.npy", f"--predict_file={d}/dev.json", f"--output_dir={d}/o9"],
            "r.npy",
        ),  # fmt: skip
        (
            "npy2json: garbage results",
            [
                "npy2json",
                f"--all_results_file={d}/all_results.npy",
                f"--predict_file={d}/dev.json",
                f"--output_dir={d}/o10",
            ],
            "all_results.npy",
        ),  # fmt: skip
        (
            "npy2json: absurd header shape",
            ["npy2json", f"--all_results_file={d}/absurd.npy", f"--predict_file={d}/dev.json", f"--output_dir={d}/o11"],
            "absurd.npy",
        ),  # fmt: skip
        (
            "npy2json: missing predict_file",
            [
                "npy2json",
                f"--all_results_file={d}/results.npy",
                f"--predict_file={d}/dev3.json",
                f"--output_dir={d}/o12",
            ],
            "dev3.json",
        ),  # fmt: skip
        ("npy2json: no predict_file", ["npy2json", f"--all_results_file={d}/absurd.npy"], "--predict_file"),
        ("convert: missing input", ["convert", f"--input={d}/ckpt", f"--output={d}/c1"], "ckpt"),
        ("convert: empty input dir", ["convert", f"--input={d}/empty_dir", f"--output={d}/c2"], "empty_dir"),
        ("convert: no arguments", ["convert"], "--input"),
        ("convert: damaged snapshot", ["convert", f"--input={d}/snapshot_1", f"--output={d}/c3"], "model.safetensors"),
        ("convert-data: missing input", ["convert-data", f"--input={d}/nodata", f"--output_dir={d}/s1"], "nodata"),
        (
            "convert-data: text as input",
            ["convert-data", f"--input={d}/notes.txt", f"--output_dir={d}/s2"],
            "notes.txt",
        ),  # fmt: skip
        (
            "create-pretraining-data: missing input",
            ["create-pretraining-data", f"--input_file={d}/in.txt", f"--output_file={d}/p1"],
            "in.txt",
        ),  # fmt: skip
        (
            "create-pretraining-data: non-UTF-8 input",
            ["create-pretraining-data", f"--input_file={d}/binary.txt", f"--output_file={d}/p2"],
            "binary.txt",
        ),  # fmt: skip
        (
            "create-pretraining-data: missing vocab",
            [
                "create-pretraining-data",
                f"--input_file={d}/notes.txt",
                f"--vocab_file={d}/v.txt",
                f"--output_file={d}/p3",
            ],
            "v.txt",
        ),  # fmt: skip
        (
            "create-pretraining-data: bad format",
            ["create-pretraining-data", f"--input_file={d}/notes.txt", "--output_format=csv", f"--output_file={d}/p4"],
            "--output_format",
        ),  # fmt: skip
        (
            "create-pretraining-data: seq length 0",
            ["create-pretraining-data", f"--input_file={d}/notes.txt", "--max_seq_length=0", f"--output_file={d}/p5"],
            "--max_seq_length",
        ),  # fmt: skip
        ("plot: missing log dir", ["plot", f"{d}/nolog"], "nolog"),
        ("plot: bad metrics line", ["plot", f"{d}/log"], "metrics.jsonl"),
        ("demo: zero iterations", ["demo", "--pretrain_iters=0"], "--pretrain_iters"),
    ]


class Timeout(Exception):
    pass


def run_case(argv: list[str], seconds: int = 60) -> tuple[str, int | None, str]:
    """(ending, exit status, stderr text) of `bertkit argv` run in this process."""
    from bertkit.cli import main

    err, out = io.StringIO(), io.StringIO()

    def alarm(*_):
        raise Timeout

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = main(argv)
            except SystemExit as e:
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
                    code = 1
                else:
                    code = e.code or 0
    except Timeout:
        return "timeout", None, err.getvalue()
    except BaseException:
        return "traceback", None, err.getvalue() + traceback.format_exc()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return ("silent" if code == 0 else "error"), code, err.getvalue()


def error_lines(stderr: str) -> list[str]:
    """The lines that say what is wrong: not argparse's usage block, not progress bars or warnings."""
    lines, in_usage = [], False
    for line in stderr.splitlines():
        if line.startswith("usage:"):
            in_usage = True
            continue
        if in_usage and line.startswith(" "):
            continue
        in_usage = False
        if line.strip() and "it/s]" not in line and "s/it]" not in line and not line.startswith("warning"):
            lines.append(line)
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--verbose", action="store_true", help="print each case's error text")
    args = ap.parse_args()
    counts = {"clear": 0, "vague": 0, "traceback": 0, "silent": 0, "timeout": 0}
    wrong_usage = 0
    with tempfile.TemporaryDirectory() as tmp:
        make_files(Path(tmp))
        old_cwd = os.getcwd()
        os.chdir(tmp)  # outputs a case writes by default land here
        try:
            for what, argv, word in cases(tmp):
                ending, code, stderr = run_case(argv)
                lines = error_lines(stderr)
                if ending == "error":
                    ending = "clear" if len(lines) == 1 and word in lines[0] else "vague"
                usage = [ln for ln in stderr.splitlines() if ln.startswith("usage:")]
                if usage and not usage[0].startswith(f"usage: bertkit {argv[0]}"):
                    wrong_usage += 1
                counts[ending] += 1
                shown = (lines[-1] if lines else (stderr.strip().splitlines() or [""])[-1])[:150]
                print(f"{ending:9} {what:45} {shown.replace(tmp, '.')}")
                if args.verbose:
                    print("    " + stderr.replace(tmp, ".").replace("\n", "\n    "))
        finally:
            os.chdir(old_cwd)
    total = sum(counts.values())
    print(f"\n{total} inputs: " + ", ".join(f"{v} {k}" for k, v in counts.items())
          + f"; {wrong_usage} printed the top-level usage instead of the subcommand's")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
