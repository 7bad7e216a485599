"""Composed configs (runtime/config.py): sections built once from flat flags, frozen, changed only by `replace`."""

import dataclasses
from dataclasses import dataclass, field

import pytest

from bertkit.runtime.config import Composed, Section, positive


@dataclass(frozen=True)
class Steps(Section):
    iter_num: int | None = field(default=10, metadata={"help": "steps"})
    use_fp16: bool = field(default=False, metadata={"help": "the seed's name"})
    precision: str = field(default="fp32", metadata={"help": "precision"})

    @staticmethod
    def resolve(values: dict) -> dict:
        return values | {"precision": "fp16"} if values["use_fp16"] else values

    def __post_init__(self) -> None:
        positive(self, "iter_num")


@dataclass(frozen=True)
class Output(Section):
    log_dir: str | None = field(default="./output", metadata={"help": "logs"})
    output_dir: str = field(default="out", metadata={"help": "results"})


@dataclass(frozen=True)
class Job(Composed):
    steps: Steps
    output: Output

    DEFAULTS = {"iter_num": None, "log_dir": None}
    HELP = {"log_dir": "logs (default: --output_dir)"}

    @classmethod
    def resolve(cls, values: dict) -> dict:
        return values | {"log_dir": values["log_dir"] or values["output_dir"]}


def test_flat_flags_build_sections_once_with_the_commands_defaults_and_rules():
    cfg = Job.from_flags(output_dir="o", use_fp16=True)
    assert cfg.steps == Steps(iter_num=None, use_fp16=True, precision="fp16")  # a section's rule, then the command's
    assert cfg.output == Output(log_dir="o", output_dir="o")
    assert list(cfg.flat()) == ["iter_num", "use_fp16", "precision", "log_dir", "output_dir"]
    assert {f.name: f.help for f in Job.flags()}["log_dir"] == "logs (default: --output_dir)"
    assert {f.name: f.default for f in Job.flags()}["iter_num"] is None


def test_a_config_is_never_changed_only_replaced():
    cfg = Job.from_flags(output_dir="o")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.output = Output()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps.iter_num = 3
    new = cfg.replace(iter_num=5, output_dir="p")
    assert (new.steps.iter_num, new.output.output_dir, cfg.steps.iter_num, cfg.output.output_dir) == (5, "p", None, "o")
    with pytest.raises(ValueError, match="--iter_num must be positive, got 0"):  # the section checks itself again
        cfg.replace(iter_num=0)


def test_unknown_and_duplicate_names_are_errors():
    with pytest.raises(TypeError, match="has no flag lr"):
        Job.from_flags(lr=1)
    with pytest.raises(TypeError, match="has no flag lr"):
        Job.from_flags().replace(lr=1)

    @dataclass(frozen=True)
    class Twice(Composed):
        a: Output
        b: Output

    with pytest.raises(TypeError, match="flag log_dir is in a and b"):
        Twice.flags()

    @dataclass(frozen=True)
    class Stale(Composed):
        a: Output
        DEFAULTS = {"nothing": 1}

    with pytest.raises(TypeError, match="DEFAULTS/HELP name no flag"):
        Stale.flags()

    @dataclass(frozen=True)
    class Loose(Composed):
        a: Output
        seed: int = field(default=1, metadata={"help": "a flag outside any section"})

    with pytest.raises(TypeError, match="seed not in a section"):
        Loose.flags()


def test_every_training_config_is_composed_of_frozen_sections_with_unique_flags():
    """The commands' configs: sections only, frozen, every flag once (the CLI flattens them with these names)."""
    from bertkit.tasks.glue.task import ClassifyConfig
    from bertkit.tasks.pretrain.task import PretrainConfig
    from bertkit.tasks.squad.config import Npy2JsonConfig, SquadConfig, SquadPredictConfig

    for cls in (PretrainConfig, SquadConfig, SquadPredictConfig, ClassifyConfig, Npy2JsonConfig):
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
        sections = cls.sections()
        assert list(sections) == [f.name for f in dataclasses.fields(cls)], cls  # nothing outside a section
        assert all(s.__dataclass_params__.frozen for s in sections.values())
        names = [f.name for f in cls.flags()]
        assert len(names) == len(set(names))
    squad = SquadConfig.sections()
    assert {"tokenizer", "windows", "model", "optimizer", "training", "run", "dist"} <= set(squad)
    assert squad["optimizer"] is PretrainConfig.sections()["optimizer"]


def test_every_command_that_tokenizes_takes_the_one_tokenizer_section():
    """--vocab_file, --do_lower_case and --check_casing are declared once (data/vocab.TokenizerFlags)."""
    import bertkit.cli as cli
    from bertkit.data.vocab import TokenizerFlags

    tokenizing = ["squad", "squad-predict", "npy2json", "classify", "ask", "serve", "create-squad-data",
                  "create-glue-data", "create-pretraining-data"]  # fmt: skip
    for name in tokenizing:
        cls, _ = cli.command(name)
        assert cls.sections()["tokenizer"] is TokenizerFlags, name
        assert {f.name for f in cls.flags() if f.section == "tokenizer"} == {"vocab_file", "do_lower_case",
                                                                              "check_casing"}  # fmt: skip


def test_the_check_phase_returns_a_new_config_and_leaves_the_given_one(tmp_path, capsys):
    """`--resume latest` with nothing to resume: the workers get resume None; the object built from the flags is
    untouched (configs are never mutated after they are built)."""
    from bertkit.tasks.pretrain.task import PretrainConfig
    from bertkit.train import runner

    cfg = PretrainConfig.from_flags(data_dir="d", resume="latest", model_save_dir=str(tmp_path / "none"))
    resolved = runner.check_resume(cfg)
    assert (cfg.run.resume, resolved.run.resume) == ("latest", None)
    assert "no snapshot in" in capsys.readouterr().out


def test_help_lists_a_commands_flags_section_by_section(capsys):
    """`bertkit squad --help` (answered from help.json, without importing the command) shows each section as a
    group headed by its name, with the flags it holds."""
    from bertkit.cli import main

    with pytest.raises(SystemExit):
        main(["squad", "--help"])
    text = capsys.readouterr().out
    heads = [line[:-1] for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert heads[-10:] == ["tokenizer", "windows", "answers", "data", "model", "task", "optimizer", "training", "run",
                           "dist"]  # fmt: skip
    after = text.split("\noptimizer:\n", 1)[1]
    assert "--learning_rate" in after.split("\ntraining:\n", 1)[0]


def test_every_commands_config_is_frozen():
    """No command's config changes once the command line has built it (derived values make a new one)."""
    import bertkit.cli as cli

    for name in cli.COMMANDS:
        cls, _ = cli.command(name)
        assert cls.__dataclass_params__.frozen, name


def test_each_sections_checks_come_before_the_commands_rules():
    """A section's own error is what the user sees, not what the command's rules make of a bad value."""
    from bertkit.serve.ask import AskConfig
    from bertkit.tasks.glue.task import ClassifyConfig

    with pytest.raises(ValueError, match="--gpu_num_per_node and --node_num must be positive"):
        ClassifyConfig.from_flags(task_name="RTE", do_train=True, data_dir="g", gpu_num_per_node=0)  # not a / 0
    with pytest.raises(ValueError, match="--task_name is required"):
        ClassifyConfig.from_flags()
    with pytest.raises(ValueError, match="--n_best_size must be positive"):
        AskConfig.from_flags(model="m", question="q", context="-", n_best_size=0)


def test_resume_rules_are_declared_on_the_sections_fields():
    from bertkit.checkpoint.snapshot import resume_rules
    from bertkit.tasks.glue.task import ClassifyConfig
    from bertkit.tasks.squad.config import SquadConfig, SquadPredictConfig

    for cls in (SquadConfig, SquadPredictConfig):
        rules = resume_rules(cls)
        assert rules["seq_length"] == rules["max_seq_length"] == ("refused", False)
        assert rules["num_hidden_layers"] == ("refused", True) and rules["learning_rate"] == ("warned", False)
    rules = resume_rules(ClassifyConfig)
    assert rules["data_dir"] == ("warned", False) and rules["hidden_dropout_prob"] == ("snapshot", True)
