"""The `bertkit` command: help, version, flag parsing from dataclasses, the smoke demo."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from bertkit import __version__
from bertkit.cli import build_parser, main, parse_bool


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"bertkit {__version__}"


def test_help_lists_subcommands_and_every_flag_has_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "demo" in capsys.readouterr().out
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest != "help" and action.help != argparse.SUPPRESS:
                assert action.help and len(action.help) > 15, (name, action.dest)
                shown = action.help.replace("%(default)s", str(action.default))
                assert shown.count("(default") <= 1 and "(default: None)" not in shown, (name, action.dest, shown)


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "bertkit", "--help"], capture_output=True, text=True, check=True)
    assert "COMMAND" in out.stdout


@pytest.mark.parametrize("text, value", [("True", True), ("true", True), ("1", True), ("False", False), ("0", False)])
def test_seed_boolean_forms(text, value):
    assert parse_bool(text) is value


def test_bad_flag_value_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--pretrain_iters", "0"])
    assert e.value.code == 2
    assert "--pretrain_iters must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--precision", "fp64"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--squad_learning_rate", "0"])
    assert "--squad_learning_rate must be positive, got 0.0" in capsys.readouterr().err


def test_positional_fields_are_required_arguments_by_place(capsys):
    import argparse
    import dataclasses

    from bertkit.cli import add_dataclass_args, config_from_args

    @dataclasses.dataclass
    class Cfg:
        data_file: str = dataclasses.field(metadata={"help": "the input file, given by place", "positional": True})
        extra: str = dataclasses.field(
            default="x", metadata={"help": "optional by place, as it has a default", "positional": True}
        )
        out_file: str | None = dataclasses.field(default=None, metadata={"help": "an ordinary --flag beside it"})

    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, Cfg)
    assert config_from_args(Cfg, parser.parse_args(["in.json", "y", "--out_file", "o"])) == Cfg("in.json", "y", "o")
    assert config_from_args(Cfg, parser.parse_args(["in.json"])) == Cfg("in.json", "x")
    with pytest.raises(SystemExit):
        parser.parse_args(["--out_file", "o"])
    assert "the following arguments are required: data_file" in capsys.readouterr().err


def test_training_flags_are_accepted_but_hidden_in_squad_predict_help(capsys):
    with pytest.raises(SystemExit):
        main(["squad-predict", "--help"])
    out = capsys.readouterr().out
    assert "--predict_file" in out and "--init_checkpoint" in out
    assert "--learning_rate" not in out and "--warmup_batches" not in out and "--use_boxing_v2" not in out
    ns = build_parser().parse_args(["squad-predict", "--learning_rate=3e-5", "--use_boxing_v2=True"])
    assert ns.learning_rate == 3e-5  # the seed's command lines still parse


def test_flags_that_disagree_and_unknown_flags_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["squad-evaluate", "a.json", "b.json", "--squad_version", "1.1", "--na_prob_file", "n.json"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("bertkit squad-evaluate: error: --na_prob_file needs the v2.0 metrics")
    assert len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as e:
        main(["squad-evaluate", "a.json", "b.json", "--squad_versoin", "1.1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(
        "bertkit squad-evaluate: error: unrecognized arguments: --squad_versoin (did you mean --squad_version?)"
    ) and err.rstrip().endswith("(see bertkit squad-evaluate --help)")


@pytest.mark.parametrize(
    "command, flag, meant",
    [
        ("squad", "--lr", "--learning_rate"),
        ("squad", "--model_name_or_path", "--init_checkpoint or --model_load_dir"),
        ("pretrain", "--model_name_or_path", "--init_checkpoint or --model_load_dir"),
        ("squad", "--per_device_train_batch_size", "--batch_size_per_device"),
        ("pretrain", "--num_train_epochs", "--iter_num"),
        ("pretrain", "--output_dir", "--model_save_dir"),
        ("pretrain", "--max_steps", "--iter_num"),
        ("pretrain", "--warmup_steps", "--warmup_batches"),
        ("classify", "--gradient_accumulation_steps", "--num_accumulation_steps"),
        ("pretrain", "--input_file", "--data_dir"),
        ("squad", "--batch_size", "--batch_size_per_device"),  # no abbreviations: never silently another flag
        ("classify", "--train_batch", "--train_batch_size"),
    ],
)
def test_hugging_face_and_google_flag_names_get_bertkits(capsys, command, flag, meant):
    with pytest.raises(SystemExit) as e:
        main([command, flag, "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    assert f"{flag} (did you mean {meant}?)" in err, err


@pytest.mark.parametrize(
    "argv, line",
    [
        (["squad-evaluate", "{d}/missing.json", "{d}/pred.json"], "data_file {d}/missing.json: No such file"),
        (["squad-evaluate", "{d}/dev.json", "{d}/all_results.npy"], "{d}/all_results.npy: the predictions file is "
                                                                   "not UTF-8 JSON text (byte 0"),
        (["pretrain", "--data_dir={d}/nodata"], "--data_dir {d}/nodata: no such file or directory"),
        (["squad", "--data_dir={d}/nodata"], "--data_dir {d}/nodata: no such file or directory"),
        (["squad", "--train_data_dir={d}/nodata"], "--train_data_dir {d}/nodata: no such file or directory"),
        (["squad", "--do_predict", "--eval_data_dir={d}/nodata", "--init_checkpoint={d}"],
         "--eval_data_dir {d}/nodata: no such file"),
        (["squad", "--train_file={d}/dev.json", "--init_checkpoint={d}/ckpt"], "--init_checkpoint {d}/ckpt: no such"),
        (["squad", "--train_file={d}/dev.json", "--model_load_dir={d}/ckpt"], "--model_load_dir {d}/ckpt: no such"),
        (["squad-predict", "--data_dir={d}/nodata"], "--data_dir {d}/nodata: no such file or directory"),
        (["convert", "--tf_checkpoint_path={d}/uncased", "--of_dump_path={d}/of"],
         "--tf_checkpoint_path {d}/uncased: no such file or directory"),
        (["convert", "--input={d}/uncased", "--output={d}/of"], "--input {d}/uncased: no such file or directory"),
        (["npy2json", "--all_results_file={d}/all_results.npy", "--predict_file={d}/dev.json"],
         "{d}/all_results.npy: cannot read all_results (its header says shape (1099511627776, 2400)"),
    ],
)  # fmt: skip
def test_a_wrong_file_is_one_line_naming_the_flag_and_file(tmp_path, capsys, argv, line):
    import json
    import struct

    (tmp_path / "dev.json").write_text(json.dumps({"version": "1.1", "data": []}))
    (tmp_path / "pred.json").write_text("{}")
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 2400), }".ljust(117) + "\n"
    (tmp_path / "all_results.npy").write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) + header.encode())
    assert main([a.format(d=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"bertkit {argv[0]}: error: " + line.format(d=tmp_path)) and "\n" not in err, err


def test_bertkits_warnings_are_one_plain_line():
    """In a log file a warning of bertkit's reads `warning: ...`, not Python's file:line: Category and source line."""
    import os
    import warnings

    from bertkit import cli

    before = warnings.formatwarning
    with cli.plain_warnings():  # what `main` runs a command in
        ours = warnings.formatwarning("no QA head", UserWarning, f"{os.sep}x{os.sep}bertkit{os.sep}qa.py", 1)
        assert ours == "warning: no QA head\n"
        theirs = warnings.formatwarning("deprecated", FutureWarning, f"{os.sep}x{os.sep}torch{os.sep}a.py", 1)
        assert "FutureWarning" in theirs
    assert warnings.formatwarning is before  # no global state left behind for the next test


def test_commands_that_do_not_train_start_without_torch(tmp_path):
    """Only the chosen command's module is imported: data creation and scoring never load torch (start-up time,
    issue 17), while training commands do."""
    text = tmp_path / "a.txt"
    text.write_text("The first sentence here.\nAnd a second one.\n\nAnother document starts.\nIt ends.\n")
    probe = (
        "import sys\nfrom bertkit.cli import main\ncode = main(sys.argv[1:])\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', code)"
    )
    runs = {
        "create-pretraining-data": [
            "--input_file",
            str(text),
            "--output_file",
            str(tmp_path / "out.tfrecord"),
            "--max_seq_length",
            "32",
            "--dupe_factor",
            "1",
        ],  # fmt: skip
        "squad-evaluate": ["--help"],
        "pretrain": ["--help"],
    }
    for command, args in runs.items():
        out = subprocess.run([sys.executable, "-c", probe, command, *args], capture_output=True, text=True)
        last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr
        if args == ["--help"]:  # argparse exits after the help: the probe's line is not printed
            assert out.returncode == 0 and "usage: bertkit" in out.stdout, out.stderr
            continue
        assert last == "NO-TORCH 0", (command, out.stderr)
    help_probe = "import sys\nfrom bertkit.cli import build_parser\nbuild_parser('squad-evaluate')\n" \
                 "print('torch' in sys.modules)"  # fmt: skip
    out = subprocess.run([sys.executable, "-c", help_probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    out = subprocess.run([sys.executable, "-c", help_probe.replace("squad-evaluate", "pretrain")],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == "True"


def test_help_table_is_what_the_configs_generate():
    """`--help` is printed from src/bertkit/help.json: it must say exactly what the dataclasses declare."""
    from bertkit import cli

    for name in cli.COMMANDS:
        real = cli._subparser(cli.build_parser(name), name).format_help()
        assert cli.help_parser(name).format_help() == real, (
            f"src/bertkit/help.json is stale for `{name}`: python -c 'import bertkit.cli as c; c.write_help_table()'"
        )


def test_every_commands_help_answers_without_importing_torch():
    """`bertkit <command> --help` for every command, in one process: no task module, no torch (issue 29: 14-21 s
    on a busy machine when it imported torch)."""
    probe = (
        "import sys, contextlib, io\nfrom bertkit.cli import main, COMMANDS\n"
        "for name in COMMANDS:\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "        main([name, '--help'])\n"
        "    assert out.getvalue().startswith('usage: bertkit ' + name), name\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('bertkit.')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['bertkit.cli']", out.stdout


@pytest.mark.parametrize(
    "argv, line",
    [
        (["pretrain", "--data_dir", "d", "--use_fp16", "True", "--precision", "bf16"],
         "--use_fp16 True and --precision bf16 disagree: give one"),
        (["squad", "--train_file", "t.json", "--train_data_dir", "r"],
         "--train_file and --train_data_dir both name training data: give one"),
        (["squad", "--do_predict", "--predict_file", "p.json"],
         "--do_predict without --do_train answers with the model at --init_checkpoint"),
        (["squad", "--train_file", "t.json", "--model", "."],
         "--model .: in squad, --model is the seed's run name (printed in the banner); the model to start from is "
         "--init_checkpoint ."),
        (["classify", "--task_name", "rte", "--do_eval", "--data_dir", ".", "--init_checkpoint", "missing"],
         "--init_checkpoint missing: no such file or directory"),
    ],
)  # fmt: skip
def test_a_newcomers_mistakes_are_one_line_naming_the_flags(argv, line, capsys):
    """Mistakes a newcomer made in a trial of the README: each one line naming the flags typed, exit 2."""
    assert main(argv) == 2 if argv[0] == "classify" else _exit_code(argv) == 2
    err = capsys.readouterr().err
    assert line in err and len(err.strip().splitlines()) == 1, err


def _exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_ask_and_serve_name_a_wrong_model_path(tmp_path, capsys):
    (tmp_path / "run" / "last_snapshot").mkdir(parents=True)
    for argv, line in (
        (["ask", "--model", str(tmp_path / "run"), "--question", "q", "--context", "-"],
         f"is a training run's output folder: its fine-tuned model is --model {tmp_path / 'run' / 'last_snapshot'}"),
        (["serve", "--model", str(tmp_path / "nothing")], f"--model {tmp_path / 'nothing'}: no such file or directory"),
    ):  # fmt: skip
        assert _exit_code(argv) == 2
        err = capsys.readouterr().err
        assert line in err and len(err.strip().splitlines()) == 1, err
