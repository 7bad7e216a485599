"""Checkpoints: bertkit's own format, and weights from any BERT checkpoint format, detected and converted.

bertkit's format is a directory (read by `load_state`, written by `save_pretrained`):

    model.safetensors    the state dict under bertkit's names (model.py)
    bert_config.json     Google's keys (config.py)
    vocab.txt            the WordPiece vocabulary, when known

`load_state` also reads, detecting which it is given:

    Hugging Face         config.json + model.safetensors (or pytorch_model.bin, unpickled with weights_only=True)
    Google TensorFlow    a V2 checkpoint directory or prefix (tf_checkpoint.py), bert_config.json beside it
    OneFlow-Benchmark    a snapshot directory: one folder per variable holding `out` (raw little-endian values)
                         and, from OneFlow's own saver, `meta` (shape and dtype); without `meta`, shapes come
                         from the config, as in the snapshots OneFlow-Benchmark's convert_tf_ckpt_to_of.py writes

Foreign names are mapped by the tables in convert.py. Reading is lazy and row by row, so a conversion holds the
output state plus one tensor, not two copies of the model. Every output directory is written under a temporary
name and renamed when complete, and an existing one is replaced only when asked to (`--force`).

Reference for the CLI: OneFlow-Benchmark's convert_tf_ckpt_to_of.py (`--tf_checkpoint_path`, `--of_dump_path`).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from bertkit.checkpoint import convert
from bertkit.checkpoint.snapshot import verify_snapshot
from bertkit.checkpoint.tf_bundle import TFCheckpoint, is_tf_checkpoint
from bertkit.data.vocab import recorded_casing
from bertkit.model.bert import BertForPreTraining, BertForQuestionAnswering
from bertkit.model.config import BertConfig
from bertkit.runtime.atomic import atomic_output

FORMATS = ("bertkit", "hf", "tf", "oneflow")
WEIGHTS, CONFIG, VOCAB = "model.safetensors", "bert_config.json", "vocab.txt"
HF_CONFIG, HF_BIN, TOKENIZER_CONFIG = "config.json", "pytorch_model.bin", "tokenizer_config.json"
OF_DATA, OF_META, OF_DONE = "out", "meta", "snapshot_done"
# OneFlow's DataType enum names (oneflow/core/common/data_type.proto), as its `meta` text files spell them.
OF_DTYPES = {
    torch.float32: "kFloat",
    torch.float64: "kDouble",
    torch.int32: "kInt32",
    torch.int64: "kInt64",
    torch.float16: "kFloat16",
    torch.bfloat16: "kBFloat16",
}


@dataclass
class LoadReport:
    """What a load took from a checkpoint, what it left, and what it found besides the weights."""

    path: str
    format: str
    loaded: list[str] = field(default_factory=list)  # bertkit names taken from the checkpoint
    new: list[str] = field(default_factory=list)  # parameters the checkpoint lacks: they keep their init
    ignored: list[str] = field(default_factory=list)  # checkpoint entries nothing uses
    skipped: list[str] = field(default_factory=list)  # optimizer slots and step counters, recognised and dropped
    global_step: int | None = None
    vocab_file: str | None = None
    do_lower_case: bool | None = None  # the casing it was trained with (tokenizer_config.json), when it says

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


def _short(names: list[str], n: int = 6) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def expected_shapes(cfg: BertConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter shape the config implies (pretraining and SQuAD heads), from models on the meta device.

    No memory for values; the first call in a process costs ~1 s and ~70 MB of torch imports.
    """
    with torch.device("meta"):
        models = (BertForPreTraining(cfg), BertForQuestionAnswering(cfg))
    return {k: tuple(v.shape) for m in models for k, v in m.state_dict().items()}


# --- readers: each a lazy mapping, foreign name -> tensor, read when looked up ------------------------------


class SafetensorsFile(Mapping[str, Tensor]):
    """A .safetensors file, optionally renamed (saved key -> the name the table expects)."""

    def __init__(self, path: str | os.PathLike, rename=lambda k: k):
        self.path = str(path)
        try:
            with safe_open(self.path, framework="pt") as f:
                self._keys = {rename(k): k for k in f.keys()}
                self.shapes = {k: tuple(f.get_slice(saved).get_shape()) for k, saved in self._keys.items()}
        except Exception as e:  # safetensors' own SafetensorError: a truncated or damaged header
            if isinstance(e, OSError):
                raise
            raise ValueError(f"{self.path}: damaged safetensors file ({str(e).strip()[:200]})") from None

    def __getitem__(self, name: str) -> Tensor:
        # Opened per tensor: the file is memory-mapped, and the pages read would stay resident until it closes.
        with safe_open(self.path, framework="pt") as f:
            return f.get_tensor(self._keys[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class OneFlowSnapshot(Mapping[str, Tensor]):
    """A OneFlow snapshot: `<dir>/<variable>/out` holds raw little-endian values.

    Shape and dtype come from the variable's `meta` file when present, else from `shapes` (float32; the step
    counter int64), else the values come back flat.
    """

    def __init__(self, path: str | os.PathLike, shapes: Mapping[str, tuple[int, ...]]):
        self.path = Path(path)
        self._vars = sorted(d.name for d in self.path.iterdir() if (d / OF_DATA).is_file())
        self.shapes, self.dtypes = {}, {}
        for name in self._vars:
            meta = self.path / name / OF_META
            if meta.is_file():
                self.shapes[name], self.dtypes[name] = _parse_of_meta(meta)
            elif name.startswith(convert.OF_STEP_PREFIX):
                self.shapes[name], self.dtypes[name] = (1,), torch.int64
            else:
                self.shapes[name], self.dtypes[name] = shapes.get(name), torch.float32
            self._check_size(name)

    def _check_size(self, name: str) -> None:
        shape, dtype = self.shapes[name], self.dtypes[name]
        have = (self.path / name / OF_DATA).stat().st_size
        if shape is None:
            if have % dtype.itemsize:
                raise ValueError(f"OneFlow variable {name}: {have} bytes is not a whole number of {dtype} values")
            return
        want = int(np.prod(shape)) * dtype.itemsize
        if have != want:
            raise ValueError(
                f"OneFlow variable {name}: expected shape {list(shape)} ({dtype}, {want} bytes), found a file of "
                f"{have} bytes ({have // dtype.itemsize} values): the snapshot does not match the config"
            )

    def __getitem__(self, name: str) -> Tensor:
        if name not in self.shapes:
            raise KeyError(name)
        values = torch.from_numpy(np.fromfile(self.path / name / OF_DATA, dtype=np.uint8))
        values = values.view(self.dtypes[name])  # uint8 first: numpy has no bfloat16
        return values if self.shapes[name] is None else values.reshape(self.shapes[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._vars)

    def __len__(self) -> int:
        return len(self._vars)


def _parse_of_meta(path: Path) -> tuple[tuple[int, ...], torch.dtype]:
    """A VariableMetaInfo text proto: `shape { dim: 2 dim: 128 } data_type: kFloat`."""
    text = path.read_text()
    dtype_name = re.search(r"data_type:\s*(\w+)", text)
    by_name = {v: k for k, v in OF_DTYPES.items()}
    if not dtype_name or dtype_name.group(1) not in by_name:
        raise ValueError(f"{path}: unreadable data_type (expected one of {', '.join(by_name)})")
    return tuple(int(d) for d in re.findall(r"dim:\s*(-?\d+)", text)), by_name[dtype_name.group(1)]


def _open_hf(path: Path) -> Mapping[str, Tensor]:
    if (path / WEIGHTS).is_file():
        return SafetensorsFile(path / WEIGHTS, rename=convert.hf_full_name)
    # Never unpickle arbitrary objects: weights_only admits tensors and plain containers only.
    try:
        try:
            state = torch.load(path / HF_BIN, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the pre-1.6 non-zip format cannot be memory-mapped
            state = torch.load(path / HF_BIN, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path / HF_BIN}: refused to unpickle it: it holds more than tensors ({e})") from None
    return {convert.hf_full_name(k): v for k, v in state.items()}


# --- detection and loading ----------------------------------------------------------------------------------


def detect_format(path: str | os.PathLike) -> str:
    """One of FORMATS, from the files at `path`."""
    p = Path(path)
    if p.is_dir():
        if (p / WEIGHTS).is_file() and (p / CONFIG).is_file() and not (p / HF_CONFIG).is_file():
            return "bertkit"
        if (p / HF_CONFIG).is_file() and ((p / WEIGHTS).is_file() or (p / HF_BIN).is_file()):
            return "hf"
        if any((d / OF_DATA).is_file() for d in p.iterdir()):
            return "oneflow"
    if is_tf_checkpoint(p):
        return "tf"
    raise ValueError(
        f"{path}: no checkpoint bertkit can read. Expected a bertkit directory ({WEIGHTS} + {CONFIG}), a Hugging "
        f"Face directory ({HF_CONFIG} + {WEIGHTS} or {HF_BIN}), a TensorFlow checkpoint (PREFIX.index + "
        f"PREFIX.data-00000-of-0000N, or their directory) or a OneFlow snapshot (a folder per variable holding "
        f"`{OF_DATA}`)"
    )


def _checkpoint_dir(path: Path) -> Path:
    """Where a checkpoint's config and vocabulary live: the directory itself, or a TF prefix's directory."""
    return path if path.is_dir() else path.parent


def own_config(path: Path, fmt: str) -> BertConfig | None:
    """The BertConfig a checkpoint carries (bert_config.json or HF config.json), or None when it has none."""
    d = _checkpoint_dir(path)
    if fmt == "hf":
        raw = json.loads((d / HF_CONFIG).read_text())
        return BertConfig.from_dict(convert.config_from_hf(raw, str(d / HF_CONFIG)), source=str(d / HF_CONFIG))
    return BertConfig.from_json_file(d / CONFIG) if (d / CONFIG).is_file() else None


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
        return _open_hf(path)
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
    if fmt == "bertkit":
        state, unused = {k: source[k] for k in source}, []
    elif fmt == "hf":
        state, unused = convert.from_hf(source, layers)
    else:
        state, unused = convert.from_table(table, source, layers)

    slots, steps = convert.training_state(fmt, unused)
    report = LoadReport(str(path), fmt, loaded=sorted(state), skipped=slots + steps)
    report.ignored = [n for n in unused if n not in report.skipped]
    report.new = [n for n in expected if n not in state and not n.startswith("qa.")]  # as BertForPreTraining
    if steps:
        report.global_step = int(source[steps[0]].reshape(-1)[0])
    vocab = _checkpoint_dir(path) / VOCAB
    report.vocab_file = str(vocab) if vocab.is_file() else None
    report.do_lower_case = recorded_casing(_checkpoint_dir(path))
    return state, cfg, fmt, report


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
    missing encoder variable or a shape that disagrees with the config.
    """
    return _load(path, config, fmt)


def load_into(
    model: nn.Module, path: str | os.PathLike, config: BertConfig | str | os.PathLike | None = None
) -> LoadReport:
    """Load a checkpoint of any format into `model`; returns a LoadReport (loaded / new / ignored names).

    A checkpoint without a config (a OneFlow snapshot) is read with the model's. Raises ValueError listing every
    parameter whose shape disagrees, before changing the model.
    """
    state, _, _, report = _load(path, config, None, default_config=getattr(model, "cfg", None))
    own = model.state_dict()
    bad = [
        f"{k}: model {list(own[k].shape)}, checkpoint {list(v.shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if bad:
        raise ValueError(f"{path}: {len(bad)} parameters disagree in shape with the model:\n  " + "\n  ".join(bad))
    report.loaded = [k for k in own if k in state]
    report.new = [k for k in own if k not in state]
    report.ignored = report.ignored + [k for k in state if k not in own]
    model.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    return report


# --- writers ------------------------------------------------------------------------------------------------


def _writing(out_dir: str | os.PathLike, overwrite: bool):
    """A temporary directory beside `out_dir`, renamed into place only when the body succeeds (atomic.py)."""
    return atomic_output(out_dir, overwrite=overwrite)


def _state_of(model_or_state: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    return {k: v.detach().cpu() for k, v in state.items()}


def _copy_vocab(vocab_file: str | os.PathLike | None, out: Path) -> None:
    if vocab_file is not None:
        shutil.copyfile(vocab_file, out / VOCAB)


def save_pretrained(
    model_or_state: nn.Module | Mapping[str, Tensor],
    cfg: BertConfig,
    out_dir: str | os.PathLike,
    vocab_file: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write bertkit's format: model.safetensors, bert_config.json and, if given, vocab.txt."""
    state = _state_of(model_or_state)
    with _writing(out_dir, overwrite) as tmp:
        tmp.mkdir()
        save_file({k: v.contiguous() for k, v in state.items()}, tmp / WEIGHTS, metadata={"format": "pt"})
        cfg.to_json_file(tmp / CONFIG)
        _copy_vocab(vocab_file, tmp)
    return Path(out_dir)


def save_hf(
    model_or_state: nn.Module | Mapping[str, Tensor],
    cfg: BertConfig,
    out_dir: str | os.PathLike,
    vocab_file: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a Hugging Face directory that transformers' BertFor*.from_pretrained loads."""
    state = _state_of(model_or_state)
    hf = {k: v.contiguous() for k, v in convert.to_hf(state, cfg.num_hidden_layers).items()}
    for dup in convert.HF_TIED:  # safetensors refuses shared tensors; transformers re-ties them on load
        hf.pop(dup, None)
    heads = (("classifier", "classifier.weight"), ("qa", "qa.weight"), ("pretraining", "mlm.bias"))
    kind = next((kind for kind, key in heads if key in state), "encoder")
    config = convert.config_to_hf(cfg, convert.HF_ARCHITECTURES[kind])
    if kind == "classifier":
        config["num_labels"] = state["classifier.weight"].shape[0]
    with _writing(out_dir, overwrite) as tmp:
        tmp.mkdir()
        save_file(hf, tmp / WEIGHTS, metadata={"format": "pt"})
        (tmp / HF_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        _copy_vocab(vocab_file, tmp)
    return Path(out_dir)


def save_oneflow(
    model_or_state: nn.Module | Mapping[str, Tensor],
    cfg: BertConfig,
    out_dir: str | os.PathLike,
    vocab_file: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a OneFlow-Benchmark snapshot: `<variable>/out` and `<variable>/meta` each, plus bert_config.json.

    OneFlow's loader reads only folders holding `out`, so the config and vocabulary beside them are harmless
    and let the snapshot be read back without flags.
    """
    state = _state_of(model_or_state)
    with _writing(out_dir, overwrite) as tmp:
        tmp.mkdir()
        for name, t in convert.to_oneflow(state, cfg.num_hidden_layers).items():
            (tmp / name).mkdir()
            with open(tmp / name / OF_DATA, "wb") as fh:  # a kernel's transposed copy lives only this long
                fh.write(t.contiguous().reshape(-1).view(torch.uint8).numpy())
            dims = "".join(f"  dim: {d}\n" for d in t.shape)
            (tmp / name / OF_META).write_text(f"shape {{\n{dims}}}\ndata_type: {OF_DTYPES[t.dtype]}\n")
        (tmp / OF_DONE).touch()
        cfg.to_json_file(tmp / CONFIG)
        _copy_vocab(vocab_file, tmp)
    return Path(out_dir)


WRITERS = {"bertkit": save_pretrained, "hf": save_hf, "oneflow": save_oneflow}


# --- `bertkit convert` --------------------------------------------------------------------------------------


@dataclass
class ConvertConfig:
    """Convert a BERT checkpoint between Google TF, Hugging Face, OneFlow and bertkit formats.

    The seed's form, `--tf_checkpoint_path DIR --of_dump_path OUT`, writes a OneFlow snapshot. The general form is
    `--input PATH --output DIR [--from tf|hf|oneflow|bertkit] [--to bertkit|hf|oneflow]`.
    """

    tf_checkpoint_path: str = field(
        default="", metadata={"help": "the seed's flag: a Google TF checkpoint (directory or prefix) to convert"}
    )
    of_dump_path: str = field(default="", metadata={"help": "the seed's flag: write a OneFlow snapshot here"})
    input: str = field(default="", metadata={"help": "checkpoint to read: a directory or a TF checkpoint prefix"})
    output: str = field(default="", metadata={"help": "directory to write (created under a temporary name)"})
    from_format: str = field(
        default="auto",
        metadata={"help": "input format (--from), detected when auto", "choices": ["auto", *FORMATS]},
    )
    to_format: str = field(
        default="auto",
        metadata={
            "help": "output format (--to); auto: oneflow with --of_dump_path, else bertkit",
            "choices": ["auto", *WRITERS],
        },
    )
    bert_config_file: str = field(
        default="", metadata={"help": "bert_config.json for an input without one (a OneFlow snapshot)"}
    )
    vocab_file: str = field(default="", metadata={"help": "vocab.txt to copy into the output, if not beside the input"})
    force: bool = field(default=False, metadata={"help": "replace an existing output directory"})

    def __post_init__(self) -> None:
        if self.tf_checkpoint_path:
            if self.input and self.input != self.tf_checkpoint_path:
                raise ValueError("give --tf_checkpoint_path or --input, not both")
            if self.from_format not in ("auto", "tf"):
                raise ValueError(f"--tf_checkpoint_path reads a TF checkpoint, but --from is {self.from_format}")
            self.input, self.from_format = self.tf_checkpoint_path, "tf"
        if self.of_dump_path:
            if self.output and self.output != self.of_dump_path:
                raise ValueError("give --of_dump_path or --output, not both")
            if self.to_format not in ("auto", "oneflow"):
                raise ValueError(f"--of_dump_path writes a OneFlow snapshot, but --to is {self.to_format}")
            self.output, self.to_format = self.of_dump_path, "oneflow"
        if not self.input:
            raise ValueError("--input (or --tf_checkpoint_path) is required")
        if not self.output:
            raise ValueError("--output (or --of_dump_path) is required")
        if self.to_format == "auto":
            self.to_format = "bertkit"


def run(cfg: ConvertConfig) -> LoadReport:
    try:
        state, bert_cfg, fmt, report = load_state(
            cfg.input,
            config=cfg.bert_config_file or None,
            fmt=None if cfg.from_format == "auto" else cfg.from_format,
        )
        vocab = cfg.vocab_file or report.vocab_file
        WRITERS[cfg.to_format](state, bert_cfg, cfg.output, vocab, overwrite=cfg.force)
    except (ValueError, OSError) as e:
        sys.exit(f"bertkit convert: error: {e}")
    report.loaded = sorted(state)
    print(
        f"{report}\nwrote {cfg.to_format} checkpoint {cfg.output} ({sum(v.numel() for v in state.values()):,} values)"
    )
    return report
