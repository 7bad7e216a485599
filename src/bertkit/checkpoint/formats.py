"""Checkpoints: bertkit's own format, and weights from any BERT checkpoint format, detected and converted.

bertkit's format is a directory (read by `load_state`, written by `save_pretrained`):

    model.safetensors    the state dict under bertkit's names (model.py)
    bert_config.json     Google's keys (config.py)
    vocab.txt            the WordPiece vocabulary, when known
    labels.txt           a classifier's label names in output order, when known

`load_state` also reads, detecting which it is given:

    Hugging Face         config.json + model.safetensors, pytorch_model.bin or their shards (hf.py)
    Google TensorFlow    a V2 checkpoint directory or prefix (tf_bundle.py), bert_config.json beside it
    OneFlow-Benchmark    a snapshot directory: a folder per variable holding `out` (oneflow.py)

Foreign names are mapped by the tables in convert.py. Reading is lazy and row by row, so a conversion holds the
output state plus one tensor, not two copies of the model. The load report accounts for every tensor of the
checkpoint once (`LoadReport.fate`): loaded, ignored by a named rule, or skipped (optimizer state); a Hugging Face
tensor no rule covers is an error. Every output directory is written under a temporary name and renamed when
complete, and an existing one is replaced only when asked to (`--force`).

Reference for the CLI: OneFlow-Benchmark's convert_tf_ckpt_to_of.py (`--tf_checkpoint_path`, `--of_dump_path`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from bertkit.checkpoint import convert, hf
from bertkit.checkpoint.files import LABELS, SafetensorsFile, copy_vocab, read_labels, state_of, write_labels
from bertkit.checkpoint.hf import save_hf
from bertkit.checkpoint.oneflow import OF_DATA, OneFlowSnapshot, is_oneflow_dir, save_oneflow
from bertkit.checkpoint.snapshot import verify_snapshot
from bertkit.checkpoint.tf_bundle import TFCheckpoint, is_tf_checkpoint
from bertkit.data.vocab import checkpoint_dir, checkpoint_vocab, recorded_casing
from bertkit.model.bert import BertForPreTraining, BertForQuestionAnswering
from bertkit.model.config import BertConfig
from bertkit.runtime.atomic import atomic_output

FORMATS = ("bertkit", "hf", "tf", "oneflow")
WEIGHTS, CONFIG, VOCAB = "model.safetensors", "bert_config.json", "vocab.txt"
HF_CONFIG = hf.HF_CONFIG
__all__ = ["LABELS", "LoadReport", "load_into", "load_state", "save_hf", "save_oneflow", "save_pretrained"]


@dataclass
class LoadReport:
    """What a load took from a checkpoint, what it left, and what it found besides the weights."""

    path: str
    format: str
    loaded: list[str] = field(default_factory=list)  # bertkit names taken from the checkpoint
    new: list[str] = field(default_factory=list)  # parameters the checkpoint lacks: they keep their init
    ignored: list[str] = field(default_factory=list)  # checkpoint entries nothing uses, each by a rule (`fate`)
    skipped: list[str] = field(default_factory=list)  # optimizer slots and step counters, recognised and dropped
    # every checkpoint tensor once, under the name the file gives it: the bertkit name it went to, or why not
    fate: dict[str, str] = field(default_factory=dict)
    global_step: int | None = None
    vocab_file: str | None = None
    do_lower_case: bool | None = None  # the casing it was trained with (tokenizer_config.json), when it says
    labels: list[str] | None = None  # a classifier's label names in output order, when the checkpoint names them

    def __str__(self) -> str:
        parts = [f"{self.format} checkpoint {self.path}: {len(self.loaded)} tensors loaded"]
        if self.new:
            parts.append(f"{len(self.new)} new (not in the checkpoint): {_short(self.new)}")
        if self.ignored:
            parts.append(f"{len(self.ignored)} ignored: {_short(self.ignored)}")
        if self.skipped:
            parts.append(f"{len(self.skipped)} optimizer/step entries skipped")
        if self.global_step is not None:
            parts.append(f"global_step {self.global_step}")
        return "; ".join(parts)

    def lines(self) -> list[str]:
        """One line per checkpoint tensor, sorted by name: `name -> what became of it`."""
        return [f"{name} -> {what}" for name, what in sorted(self.fate.items())]


def _short(names: list[str], n: int = 6) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def expected_shapes(cfg: BertConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter shape the config implies (pretraining and SQuAD heads), from models on the meta device.

    No memory for values; the first call in a process costs ~1 s and ~70 MB of torch imports.
    """
    with torch.device("meta"):
        models = (BertForPreTraining(cfg), BertForQuestionAnswering(cfg))
    return {k: tuple(v.shape) for m in models for k, v in m.state_dict().items()}


# --- detection and loading ----------------------------------------------------------------------------------


def detect_format(path: str | os.PathLike) -> str:
    """One of FORMATS, from the files at `path`."""
    p = Path(path)
    if p.is_dir():
        if (p / WEIGHTS).is_file() and (p / CONFIG).is_file() and not (p / HF_CONFIG).is_file():
            return "bertkit"
        if hf.is_hf_dir(p):
            return "hf"
        if is_oneflow_dir(p):
            return "oneflow"
    if is_tf_checkpoint(p):
        return "tf"
    raise ValueError(
        f"{path}: no checkpoint bertkit can read. Expected a bertkit directory ({WEIGHTS} + {CONFIG}), a Hugging "
        f"Face directory ({HF_CONFIG} + one of {', '.join(hf.WEIGHT_FILES)}), a TensorFlow checkpoint (PREFIX.index"
        f" + PREFIX.data-00000-of-0000N, or their directory) or a OneFlow snapshot (a folder per variable holding "
        f"`{OF_DATA}`)"
    )


def own_config(path: Path, fmt: str) -> BertConfig | None:
    """The BertConfig a checkpoint carries (bert_config.json or HF config.json), or None when it has none."""
    d = checkpoint_dir(path)
    if fmt == "hf":
        return hf.bert_config(d)
    return BertConfig.from_json_file(d / CONFIG) if (d / CONFIG).is_file() else None


def own_labels(path: Path, fmt: str) -> list[str] | None:
    """A classifier's label names in output order, as the checkpoint records them (HF config.json's id2label, a
    bertkit directory's labels.txt), or None."""
    d = checkpoint_dir(path)
    if fmt == "hf":
        return hf.labels_from_config(hf.read_config(d), str(d / HF_CONFIG))
    return read_labels(d)


def _as_config(config: BertConfig | str | os.PathLike) -> BertConfig:
    return config if isinstance(config, BertConfig) else BertConfig.from_json_file(config)


def _table(fmt: str) -> list[tuple]:
    """The name table of a format; bertkit's own is the identity over every name the model can have."""
    if fmt == "bertkit":
        return [(name, (name,)) for name, _ in convert.HF_TABLE]
    return {"hf": convert.HF_TABLE, "tf": convert.TF_TABLE, "oneflow": convert.OF_TABLE}[fmt]


def _open(path: Path, fmt: str, shapes: Mapping[str, tuple[int, ...]]) -> Mapping[str, Tensor]:
    if fmt == "bertkit":
        verify_snapshot(path)  # a snapshot's manifest, when it has one: a flipped bit is refused, not loaded
        return SafetensorsFile(path / WEIGHTS)
    if fmt == "hf":
        return hf.open_weights(path)
    if fmt == "tf":
        return TFCheckpoint(path)
    return OneFlowSnapshot(path, shapes)


def _load(
    path: str | os.PathLike,
    config: BertConfig | str | os.PathLike | None,
    fmt: str | None,
    default_config: BertConfig | None = None,
) -> tuple[dict[str, Tensor], BertConfig, str, LoadReport]:
    path = Path(path)
    if fmt is None and _oneflow_over_snapshot(path):
        return _load_merged(path, config, default_config)
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; expected one of {', '.join(FORMATS)}")
    cfg = _as_config(config) if config is not None else own_config(path, fmt) or default_config
    if cfg is None:
        raise ValueError(f"{path}: this {fmt} checkpoint has no {CONFIG} beside it; give one (--bert_config_file)")
    layers, table, expected = cfg.num_hidden_layers, _table(fmt), expected_shapes(cfg)
    shapes = convert.foreign_shapes(table, expected, layers)

    # Check everything the metadata tells (names, shapes, sizes) before reading any tensor.
    source = _open(path, fmt, shapes)
    _check_shapes(source, shapes, fmt, cfg)
    _check_layers(source, table, layers, fmt)
    rows = {ours: theirs for ours, theirs, *_ in convert.expand_table(table, layers)}
    required = [n for n in expected if n.startswith(("bert.emb.", "bert.layers."))]  # pooler and heads: optional
    missing = [rows[n][0] for n in required if not all(t in source for t in rows[n])]
    if missing:
        raise ValueError(f"{path}: the {fmt} checkpoint lacks {_short(missing)}, which the config requires")

    # Convert, one table row (one tensor, or the three of a fused QKV) at a time.
    rules: dict[str, str] = {}
    if fmt == "bertkit":
        state, unused = {k: source[k] for k in source}, []
    elif fmt == "hf":
        state, rules, unknown = convert.map_hf(source, layers)
        if unknown:
            raise ValueError(f"{path}: {len(unknown)} tensor(s) no rule of bertkit's covers: {_short(unknown)} "
                             f"(it reads {', '.join(convert.HF_READ_ARCHITECTURES)})")  # fmt: skip
        unused = list(rules)
    else:
        state, unused = convert.from_table(table, source, layers)

    slots, steps = convert.training_state(fmt, unused)
    report = LoadReport(str(path), fmt, loaded=sorted(state), skipped=slots + steps)
    report.ignored = [n for n in unused if n not in report.skipped]
    report.new = [n for n in expected if n not in state and not n.startswith("qa.")]  # as BertForPreTraining
    for ours in state:  # every tensor once: where it went, why it was left
        for t in rows.get(ours, (convert.HF_DECODER,) if ours == convert.UNTIED_DECODER else (ours,)):
            report.fate[t] = ours
    if "mlm.bias" in state and fmt == "hf" and "cls.predictions.bias" not in source:
        report.fate.pop("cls.predictions.bias", None)
        report.fate[convert.HF_DECODER_BIAS] = "mlm.bias"  # the lone decoder bias is the MLM bias
    report.fate |= {n: f"ignored: {rules.get(n, 'not a variable of the model')}" for n in report.ignored}
    report.fate |= {n: "skipped: optimizer state or step counter" for n in report.skipped}
    if hasattr(source, "saved"):  # listed under the names the file gives them (BertModel's, legacy gamma/beta)
        report.fate = {source.saved(n): what for n, what in report.fate.items()}
    if steps:
        report.global_step = int(source[steps[0]].reshape(-1)[0])
    report.vocab_file = checkpoint_vocab(path)
    report.do_lower_case = recorded_casing(checkpoint_dir(path))
    report.labels = own_labels(path, fmt)
    return state, cfg, fmt, report


def _oneflow_over_snapshot(path: Path) -> bool:
    """A bertkit or Hugging Face directory (model.safetensors) that also holds OneFlow variable folders: the OneFlow
    tutorial's merge (`cp -R --remove-destination oneflow_model/* squadModel/`), never to be read as one or the other."""
    return path.is_dir() and (path / WEIGHTS).is_file() and is_oneflow_dir(path)


def _load_merged(
    path: Path, config: BertConfig | str | os.PathLike | None, default_config: BertConfig | None
) -> tuple[dict[str, Tensor], BertConfig, str, LoadReport]:
    """The tutorial's "partial initialisation": each OneFlow variable copied in replaces the tensor of the same name
    in model.safetensors (the pretrained encoder over a fresh SQuAD model); the rest (the QA head) is kept. The
    snapshot's manifest is not checked: the copy replaced bert_config.json and vocab.txt it lists."""
    state, cfg, _, report = _load(path, config, "oneflow", default_config)
    base = SafetensorsFile(path / WEIGHTS)
    kept = sorted(k for k in base if k not in state)
    state = {**{k: base[k] for k in kept}, **state}
    report.format = f"OneFlow variables ({len(state) - len(kept)}) copied over {WEIGHTS} ({len(kept)} kept from it)"
    report.loaded = sorted(state)
    return state, cfg, "oneflow", report


def _check_shapes(source: Mapping, shapes: Mapping[str, tuple], fmt: str, cfg: BertConfig) -> None:
    """Compare what the checkpoint says (index, header or meta: no data read) with what the config implies."""
    found = getattr(source, "shapes", None)
    for name, want in shapes.items():
        if name not in source:
            continue
        have = found[name] if found is not None else tuple(source[name].shape)
        if have is not None and tuple(have) != want:
            raise ValueError(
                f"{fmt} variable {name}: expected shape {list(want)} from the config (hidden_size="
                f"{cfg.hidden_size}, vocab_size={cfg.vocab_size}, ...), found {list(have)}"
            )


def _check_layers(source: Mapping, table: list[tuple], layers: int, fmt: str) -> None:
    """A checkpoint deeper than its config would silently lose layers: refuse it."""
    rows = convert.expand_table(table, layers + 1)
    extra = [t for ours, theirs, *_ in rows if ours.startswith(f"bert.layers.{layers}.") for t in theirs]
    extra = [t for t in extra if t in source]
    if extra:
        raise ValueError(f"{fmt} checkpoint has {extra[0]}, but the config says num_hidden_layers={layers}")


def load_state(
    path: str | os.PathLike, config: BertConfig | str | os.PathLike | None = None, fmt: str | None = None
) -> tuple[dict[str, Tensor], BertConfig, str, LoadReport]:
    """Read any supported checkpoint -> (state dict in bertkit names, its BertConfig, format name, report).

    `config` (a BertConfig or a bert_config.json path) overrides the checkpoint's own and is required for those
    that carry none. `fmt` forces a format instead of detecting it. Raises ValueError, naming the variable, for a
    missing encoder variable, a shape that disagrees with the config, a Hugging Face tensor no rule covers, and an
    untied MLM decoder (bertkit's is the word embeddings; `load_into` a model without the MLM head drops it).
    """
    state, cfg, fmt, report = _load(path, config, fmt)
    if convert.UNTIED_DECODER in state:
        raise ValueError(f"{path}: {convert.untied_decoder_error(state)}")
    return state, cfg, fmt, report


def load_into(
    model: nn.Module, path: str | os.PathLike, config: BertConfig | str | os.PathLike | None = None
) -> LoadReport:
    """Load a checkpoint of any format into `model`; returns a LoadReport (loaded / new / ignored names).

    A checkpoint without a config (a OneFlow snapshot) is read with the model's. Heads the model lacks are dropped
    (ignored, by that rule): a pretraining checkpoint fine-tunes a classifier. Raises ValueError listing every
    parameter whose shape disagrees, and for an untied MLM decoder when the model has the MLM head, before changing
    the model.
    """
    state, _, _, report = _load(path, config, None, default_config=getattr(model, "cfg", None))
    own = model.state_dict()
    if convert.UNTIED_DECODER in state and "mlm.bias" in own:
        raise ValueError(f"{path}: {convert.untied_decoder_error(state)}")
    bad = [
        f"{k}: model {list(own[k].shape)}, checkpoint {list(v.shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if bad:
        raise ValueError(f"{path}: {len(bad)} parameters disagree in shape with the model:\n  " + "\n  ".join(bad))
    report.loaded = [k for k in own if k in state]
    report.new = [k for k in own if k not in state]
    dropped = [k for k in state if k not in own]
    report.ignored = report.ignored + dropped
    for name, what in report.fate.items():
        if what in dropped:
            report.fate[name] = f"ignored: {type(model).__name__} has no {what.split('.')[0]} (was {what})"
    model.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    return report


# --- writers ------------------------------------------------------------------------------------------------


def save_pretrained(
    model_or_state: nn.Module | Mapping[str, Tensor],
    cfg: BertConfig,
    out_dir: str | os.PathLike,
    vocab_file: str | os.PathLike | None = None,
    *,
    labels: list[str] | tuple[str, ...] | None = None,
    do_lower_case: bool | None = None,
    overwrite: bool = False,
) -> Path:
    """Write bertkit's format: model.safetensors, bert_config.json and, if given, vocab.txt, labels.txt (a
    classifier's label names in output order) and tokenizer_config.json (the casing)."""
    state = state_of(model_or_state)
    if convert.UNTIED_DECODER in state:
        raise ValueError(convert.untied_decoder_error(state))
    with atomic_output(out_dir, overwrite=overwrite) as tmp:
        tmp.mkdir()
        save_file({k: v.contiguous() for k, v in state.items()}, tmp / WEIGHTS, metadata={"format": "pt"})
        cfg.to_json_file(tmp / CONFIG)
        copy_vocab(vocab_file, tmp)
        write_labels(labels, tmp)
        if do_lower_case is not None:
            (tmp / hf.TOKENIZER_CONFIG).write_text(f'{{"do_lower_case": {str(do_lower_case).lower()}}}\n')
    return Path(out_dir)


WRITERS = {"bertkit": save_pretrained, "hf": save_hf, "oneflow": save_oneflow}


# --- `bertkit convert` --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvertConfig:
    """Convert a BERT checkpoint between Google TF, Hugging Face, OneFlow and bertkit formats.

    The seed's form, `--tf_checkpoint_path DIR --of_dump_path OUT`, writes a OneFlow snapshot. The general form is
    `--input PATH --output DIR [--from tf|hf|oneflow|bertkit] [--to bertkit|hf|oneflow]`. Hugging Face input: every
    form transformers reads for BERT (BertModel, BertForPreTraining, BertForMaskedLM, BertForSequenceClassification,
    BertForQuestionAnswering; .safetensors or .bin, sharded or not; legacy LayerNorm gamma/beta); a tensor no rule
    covers is an error. Where transformers is ambiguous bertkit follows Google and refuses: an MLM decoder unlike the
    word embeddings (Google's decoder is the embeddings; transformers would use either, by tie_word_embeddings), a
    decoder bias unlike cls.predictions.bias, id2label and label2id that disagree. A classifier's labels travel:
    id2label/label2id <-> labels.txt.
    """

    tf_checkpoint_path: str = field(
        default="", metadata={"help": "the seed's flag: a Google TF checkpoint (directory or prefix) to convert"}
    )
    of_dump_path: str = field(default="", metadata={"help": "the seed's flag: write a OneFlow snapshot here"})
    input: str = field(default="", metadata={"help": "checkpoint to read: a directory or a TF checkpoint prefix"})
    output: str = field(default="", metadata={"help": "directory to write (created under a temporary name)"})
    from_format: str = field(
        default="auto",
        metadata={"help": "input format, detected when auto", "choices": ["auto", *FORMATS], "aliases": ["--from"]},
    )
    to_format: str = field(
        default="auto",
        metadata={
            "help": "output format; auto: oneflow with --of_dump_path, else bertkit",
            "aliases": ["--to"],
            "choices": ["auto", *WRITERS],
        },
    )
    bert_config_file: str = field(
        default="", metadata={"help": "bert_config.json for an input without one (a OneFlow snapshot)"}
    )
    vocab_file: str = field(default="", metadata={"help": "vocab.txt to copy into the output, if not beside the input"})
    force: bool = field(default=False, metadata={"help": "replace an existing output directory"})
    list_tensors: bool = field(
        default=False, metadata={"help": "print every tensor of the input once, with what became of it"}
    )

    @classmethod
    def from_flags(cls, **flags) -> ConvertConfig:
        """The config with the seed's names folded into the general ones (--tf_checkpoint_path is --input --from tf,
        --of_dump_path is --output --to oneflow) and --to auto decided. ValueError for flags that disagree."""
        cfg = cls(**flags)
        fixed = {}
        if cfg.tf_checkpoint_path:
            if cfg.input and cfg.input != cfg.tf_checkpoint_path:
                raise ValueError("give --tf_checkpoint_path or --input, not both")
            if cfg.from_format not in ("auto", "tf"):
                raise ValueError(f"--tf_checkpoint_path reads a TF checkpoint, but --from is {cfg.from_format}")
            fixed |= {"input": cfg.tf_checkpoint_path, "from_format": "tf"}
        if cfg.of_dump_path:
            if cfg.output and cfg.output != cfg.of_dump_path:
                raise ValueError("give --of_dump_path or --output, not both")
            if cfg.to_format not in ("auto", "oneflow"):
                raise ValueError(f"--of_dump_path writes a OneFlow snapshot, but --to is {cfg.to_format}")
            fixed |= {"output": cfg.of_dump_path, "to_format": "oneflow"}
        cfg = dataclasses.replace(cfg, **fixed)
        if not cfg.input:
            raise ValueError("--input (or --tf_checkpoint_path) is required")
        if not cfg.output:
            raise ValueError("--output (or --of_dump_path) is required")
        return dataclasses.replace(cfg, to_format="bertkit") if cfg.to_format == "auto" else cfg


def run(cfg: ConvertConfig) -> LoadReport:
    """Errors are ValueErrors naming the flag typed (one line, exit 2, as every command's)."""
    flag = "--tf_checkpoint_path" if cfg.tf_checkpoint_path else "--input"
    if not Path(cfg.input).exists() and not any(Path(cfg.input).parent.glob(Path(cfg.input).name + ".*")):
        raise ValueError(f"{flag} {cfg.input}: no such file or directory")
    try:
        state, bert_cfg, fmt, report = load_state(
            cfg.input,
            config=cfg.bert_config_file or None,
            fmt=None if cfg.from_format == "auto" else cfg.from_format,
        )
        vocab = cfg.vocab_file or report.vocab_file
        WRITERS[cfg.to_format](state, bert_cfg, cfg.output, vocab, labels=report.labels,
                               do_lower_case=report.do_lower_case, overwrite=cfg.force)  # fmt: skip
    except OSError as e:
        raise ValueError(f"{e.filename or cfg.input}: {e.strerror or e}") from None
    report.loaded = sorted(state)
    if cfg.list_tensors:
        print("\n".join(report.lines()))
    if report.labels:
        print(f"labels (output order): {', '.join(report.labels)}")
    print(
        f"{report}\nwrote {cfg.to_format} checkpoint {cfg.output} ({sum(v.numel() for v in state.values()):,} values)"
    )
    return report
