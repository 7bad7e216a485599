"""The one model builder: every task's model, from a snapshot to resume, a checkpoint to start from, or flags.

    --resume SNAPSHOT   its bert_config.json, weights and train state (the check phase verified its manifest)
    otherwise           `cfg.model.model_config()`: --bert_config_file, else the config the checkpoint at --model_load_dir
                        carries, else the size flags; initialised under --seed (a new head's draws follow it), then
                        the checkpoint's weights loaded, whatever its format (checkpoint/formats.py)

Every task (pretrain, squad, squad-predict, classify) calls `build_model` with its head's class; what the log says
is the same for all: where the config came from, the model's size, and what the checkpoint gave it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from bertkit.checkpoint.formats import LoadReport, load_into
from bertkit.checkpoint.snapshot import CONFIG, load_snapshot, snapshot_extras
from bertkit.model.bert import Bert, BertForPreTraining, num_parameters
from bertkit.model.config import BertConfig
from bertkit.runtime import dist
from bertkit.train.config import model_source


def build_model(
    cfg,
    head: Callable[[BertConfig], nn.Module],
    env: dist.DistEnv,
    say: Callable[[str], None],
    after_load: Callable[[nn.Module, LoadReport], None] | None = None,
) -> tuple[nn.Module, BertConfig, dict | None]:
    """(model on env's device, its config, the train state when resuming). `cfg`: a task's config (its sections run,
    training and model: train/config.py); `head`: e.g. BertForQuestionAnswering, or a lambda adding the
    number of labels; `after_load(model, report)`: a task's adjustment once --model_load_dir is loaded (classify
    reorders a classifier's labels)."""
    if cfg.run.resume:
        weights, bert_cfg, resume_state = load_snapshot(cfg.run.resume, verify=False)  # verified by the check phase
        model = set_unpad(head(bert_cfg), cfg)
        model.load_state_dict(weights)
        say(f"Resuming from {cfg.run.resume} at iter {resume_state['step']}.")
        return model.to(env.device), bert_cfg, resume_state
    bert_cfg, source = cfg.model.model_config()
    torch.manual_seed(cfg.training.seed)  # a random model's draws, and a new head's, follow --seed
    model = set_unpad(head(bert_cfg), cfg)
    say(f"{model_source(source)}: {model_line(bert_cfg, model)}")
    if cfg.model.model_load_dir:
        report = load_into(model, cfg.model.model_load_dir)
        say(load_summary(report))
        if after_load is not None:
            after_load(model, report)
    else:
        say("Init model on demand (random weights)")
        if not isinstance(model, BertForPreTraining):
            say(f"warning: no --init_checkpoint: this task starts from random weights ({model_line(bert_cfg, model)}"
                f"), not from a pretrained BERT; pass --init_checkpoint CHECKPOINT to fine-tune one")  # fmt: skip
    return model.to(env.device), bert_cfg, None


def checkpoint_path(cfg) -> str | None:
    """The checkpoint the model comes from, whose config, vocabulary and casing count: the snapshot resumed (once
    `--resume latest` is resolved), else --model_load_dir (or --init_checkpoint), else None."""
    resume = cfg.run.resume
    return resume if resume and resume != "latest" else cfg.model.model_load_dir


def fine_tuned_differently(cfg, names: tuple[str, ...]) -> str | None:
    """A note when the checkpoint a prediction reads (`checkpoint_path`) is a bertkit snapshot fine-tuned with other
    values of these flags (its run_config.json) than the run's: predicting with other windows than training's
    changes answers, and `ask`/`serve` take the snapshot's own. None when they agree or nothing is recorded."""
    path = checkpoint_path(cfg)
    run = (snapshot_extras(path)[2] if path and Path(path).is_dir() else None) or {}
    flags = cfg.flat()
    other = [n for n in names if isinstance(run.get(n), int) and run[n] != flags.get(n)]
    if not other:
        return None
    was = " ".join(f"--{n} {run[n]}" for n in other)
    now = ", ".join(f"{flags.get(n)}" for n in other)
    return (
        f"note: this model was fine-tuned with {was} (its run_config.json); predicting with {now}: pass {was} "
        "to predict as it was trained (bertkit ask and serve do)"
    )


def model_config(cfg) -> BertConfig:
    """The config `build_model` will give the model, read in the check phase: the snapshot's when resuming (after
    `--resume latest` is resolved), else `cfg.model.model_config()`'s."""
    resume = cfg.run.resume
    if resume and resume != "latest" and (Path(resume) / CONFIG).is_file():
        return BertConfig.from_json_file(Path(resume) / CONFIG)
    return cfg.model.model_config()[0]


def set_unpad(model: nn.Module, cfg) -> nn.Module:
    """The encoder's path from the run's flags: real tokens only with --unpad, padded with --compile (compiled
    graphs want fixed shapes), else None: padded in training, unpadded without gradients (bert.Bert)."""
    for m in model.modules():
        if isinstance(m, Bert):
            m.unpad = True if cfg.training.unpad else False if cfg.training.compile else None
    return model


def model_line(c: BertConfig, model: nn.Module) -> str:
    """e.g. '6 layers, hidden 384, 12 heads, FFN 1536, vocab 30522, 22.7M parameters'."""
    n = num_parameters(model)
    count = f"{n / 1e6:.1f}M" if n >= 100_000 else f"{n:,}"
    return (f"{c.num_hidden_layers} layers, hidden {c.hidden_size}, {c.num_attention_heads} heads, FFN "
            f"{c.intermediate_size}, vocab {c.vocab_size}, {count} parameters")  # fmt: skip


def load_summary(report: LoadReport) -> str:
    """What a checkpoint gave the model: the parameters loaded, those new (a task's head when starting from a
    pretraining checkpoint) and the checkpoint entries left unused (pretraining heads)."""
    step = f", global_step {report.global_step}" if report.global_step is not None else ""
    lines = [f"Restoring model from {report.path} ({report.format} checkpoint{step}):"]
    for what, names in (("loaded", report.loaded), ("new", report.new), ("ignored", report.ignored)):
        lines.append(f"  {what} ({len(names)}): {_compact(names)}")
    if report.skipped:
        lines.append(f"  optimizer and step entries skipped ({len(report.skipped)}): the optimizer starts afresh")
    return "\n".join(lines)


def _compact(names: list[str]) -> str:
    """Names with layer indices folded: `bert.layers.{0..11}.attn.qkv.weight` stands for twelve names."""
    groups: dict[str, list[int]] = {}
    for name in names:
        m = re.fullmatch(r"(.*\.layers\.)(\d+)(\..*)", name)
        groups.setdefault(f"{m[1]}{{}}{m[3]}" if m else name, []).append(int(m[2]) if m else 0)
    out = []
    for key, idx in groups.items():
        if "{}" in key:
            contiguous = len(idx) > 1 and idx == list(range(idx[0], idx[0] + len(idx)))
            key = key.replace("{}", f"{{{idx[0]}..{idx[-1]}}}" if contiguous else "{" + ",".join(map(str, idx)) + "}")
        out.append(key)
    return ", ".join(out) or "-"
