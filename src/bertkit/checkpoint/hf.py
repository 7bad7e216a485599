"""Hugging Face model directories: reading every form transformers reads for BERT, and writing one it loads.

Read: `config.json` beside `model.safetensors`, `model.safetensors.index.json` (shards), `pytorch_model.bin` or
`pytorch_model.bin.index.json`, preferred in that order as transformers prefers them; keys in any of BertModel's
and BertFor*'s forms (the rules are `convert.map_hf`'s). A classifier's labels come from `id2label`/`label2id`.
Written: `config.json` (Google's keys, transformers' model_type and architectures, `id2label`/`label2id` for a
classifier whose labels are known), `model.safetensors`, `vocab.txt` and `tokenizer_config.json` when known, so
that transformers' `from_pretrained` and `pipeline(...)` load the directory as it is.

Reference: transformers' `PreTrainedModel.from_pretrained` / `save_pretrained` file names and `PretrainedConfig`'s
`id2label` (keys are strings of the ids in json) and `label2id`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor, nn

from bertkit.checkpoint import convert
from bertkit.checkpoint.files import Renamed, SafetensorsFile, Sharded, copy_vocab, load_torch_file, state_of
from bertkit.model.config import BertConfig
from bertkit.runtime.atomic import atomic_output

HF_CONFIG, TOKENIZER_CONFIG = "config.json", "tokenizer_config.json"
HF_SAFE, HF_SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"
HF_BIN, HF_BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
WEIGHT_FILES = (HF_SAFE, HF_SAFE_INDEX, HF_BIN, HF_BIN_INDEX)  # transformers' order of preference


def is_hf_dir(path: Path) -> bool:
    return path.is_dir() and (path / HF_CONFIG).is_file() and any((path / f).is_file() for f in WEIGHT_FILES)


def weights_file(path: Path) -> Path:
    """The weight file transformers would read in `path` (the first of WEIGHT_FILES there)."""
    return next(path / f for f in WEIGHT_FILES if (path / f).is_file())


def open_weights(path: Path) -> Mapping[str, Tensor]:
    """The directory's tensors under BertFor*'s names (`convert.hf_name`), read lazily where the file allows."""
    file = weights_file(path)
    if file.name == HF_SAFE:
        raw = SafetensorsFile(file)
    elif file.name == HF_SAFE_INDEX:
        raw = Sharded(file, SafetensorsFile)
    elif file.name == HF_BIN:
        raw = load_torch_file(file)
    else:
        raw = Sharded(file, load_torch_file)
    convert.hf_names(raw, str(file))  # two saved keys for one tensor (gamma and weight) are refused here
    return Renamed(raw, convert.hf_name)


def read_config(path: Path) -> dict:
    file = path / HF_CONFIG
    try:
        d = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{file}: expected a JSON object")
    return d


def bert_config(path: Path) -> BertConfig:
    """The BertConfig of a Hugging Face directory (its config.json, checked to be plain BERT)."""
    source = str(path / HF_CONFIG)
    return BertConfig.from_dict(convert.config_from_hf(read_config(path), source), source=source)


def labels_from_config(d: dict, source: str) -> list[str] | None:
    """A classifier's label names in output order, from `id2label` (checked against `label2id`); None when the
    config names none, or only transformers' placeholders LABEL_0, LABEL_1, ... (which say nothing of the order).

    transformers' pipeline reads id2label and its run_glue label2id; a config where the two disagree is refused
    rather than read one way.
    """
    id2label = d.get("id2label")
    if not id2label:
        return None
    try:
        items = sorted((int(k), str(v)) for k, v in id2label.items())
    except (ValueError, AttributeError):
        raise ValueError(
            f"{source}: id2label should map output ids (0, 1, ...) to names, got {id2label!r:.80}"
        ) from None
    names = [v for _, v in items]
    if [i for i, _ in items] != list(range(len(items))) or len(set(names)) != len(names):
        raise ValueError(f"{source}: id2label {dict(items)} should name outputs 0..{len(items) - 1} once each")
    if names == [f"LABEL_{i}" for i in range(len(names))]:
        return None
    label2id = d.get("label2id")
    if label2id and {str(k): v for k, v in label2id.items()} != {n: i for i, n in enumerate(names)}:
        raise ValueError(f"{source}: id2label {dict(items)} and label2id {label2id} disagree; which order the "
                         "outputs follow is ambiguous")  # fmt: skip
    return names


def labels_to_config(labels: list[str] | tuple[str, ...]) -> dict:
    return {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}


def save_hf(
    model_or_state: nn.Module | Mapping[str, Tensor],
    cfg: BertConfig,
    out_dir: str | os.PathLike,
    vocab_file: str | os.PathLike | None = None,
    *,
    labels: list[str] | tuple[str, ...] | None = None,
    do_lower_case: bool | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a Hugging Face directory that transformers' BertFor*.from_pretrained and pipeline() load.

    A classifier's `labels` (names in output order) become id2label/label2id; a one-output classifier without
    labels is written as a regression (problem_type). ValueError when labels do not match the classifier's outputs.
    """
    state = state_of(model_or_state)
    if convert.UNTIED_DECODER in state:
        raise ValueError(convert.untied_decoder_error(state))
    hf = {k: v.contiguous() for k, v in convert.to_hf(state, cfg.num_hidden_layers).items()}
    for dup in convert.HF_TIED:  # safetensors refuses shared tensors; transformers re-ties them on load
        hf.pop(dup, None)
    heads = (("classifier", "classifier.weight"), ("qa", "qa.weight"), ("pretraining", "mlm.bias"))
    kind = next((kind for kind, key in heads if key in state), "encoder")
    config = convert.config_to_hf(cfg, convert.HF_ARCHITECTURES[kind])
    if kind == "classifier":
        n = state["classifier.weight"].shape[0]
        config["num_labels"] = n
        if labels:
            if len(labels) != n:
                raise ValueError(f"{len(labels)} labels ({', '.join(labels)}) for a classifier of {n} outputs")
            config |= labels_to_config(labels)
        elif n == 1:
            config["problem_type"] = "regression"
    with atomic_output(out_dir, overwrite=overwrite) as tmp:
        tmp.mkdir()
        save_file(hf, tmp / HF_SAFE, metadata={"format": "pt"})
        (tmp / HF_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        copy_vocab(vocab_file, tmp)
        if do_lower_case is not None:
            tokenizer = {"do_lower_case": do_lower_case, "tokenizer_class": "BertTokenizer",
                         "model_max_length": cfg.max_position_embeddings}  # fmt: skip
            (tmp / TOKENIZER_CONFIG).write_text(json.dumps(tokenizer, indent=2) + "\n")
    return Path(out_dir)
