"""Checkpoint name tables: the only place foreign parameter names appear.

One explicit table per foreign format. Each row pairs a bertkit name with the foreign name(s) it comes
from; `{i}` stands for the layer index. A row with several foreign names is a fusion: bertkit's QKV
projection is Hugging Face's query, key and value weights concatenated along the output dimension (dim 0).

Hugging Face names follow transformers' `BertForPreTraining`, `BertForQuestionAnswering` and
`BertForSequenceClassification` (the decoder weight `cls.predictions.decoder.weight` is tied to the word
embeddings and `cls.predictions.decoder.bias` to `cls.predictions.bias`, so bertkit keeps one copy of each).
Google TensorFlow (read) and OneFlow-Benchmark (read and write) tables follow below the Hugging Face one; their
rows also say how the foreign tensor is laid out (TF and OneFlow store dense kernels transposed). The files
themselves are read and written by `bertkit.checkpoint.formats`; here are only names, layouts and pure functions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from bertkit.model.config import BertConfig

# (bertkit name, Hugging Face name or names); per-layer rows use {i}.
HF_TABLE: list[tuple[str, tuple[str, ...]]] = [
    ("bert.emb.word.weight", ("bert.embeddings.word_embeddings.weight",)),
    ("bert.emb.position.weight", ("bert.embeddings.position_embeddings.weight",)),
    ("bert.emb.token_type.weight", ("bert.embeddings.token_type_embeddings.weight",)),
    ("bert.emb.norm.weight", ("bert.embeddings.LayerNorm.weight",)),
    ("bert.emb.norm.bias", ("bert.embeddings.LayerNorm.bias",)),
    *(
        (
            f"bert.layers.{{i}}.attn.qkv.{p}",
            tuple(f"bert.encoder.layer.{{i}}.attention.self.{n}.{p}" for n in ("query", "key", "value")),
        )
        for p in ("weight", "bias")
    ),
    ("bert.layers.{i}.attn.proj.weight", ("bert.encoder.layer.{i}.attention.output.dense.weight",)),
    ("bert.layers.{i}.attn.proj.bias", ("bert.encoder.layer.{i}.attention.output.dense.bias",)),
    ("bert.layers.{i}.attn_norm.weight", ("bert.encoder.layer.{i}.attention.output.LayerNorm.weight",)),
    ("bert.layers.{i}.attn_norm.bias", ("bert.encoder.layer.{i}.attention.output.LayerNorm.bias",)),
    ("bert.layers.{i}.mlp.fc1.weight", ("bert.encoder.layer.{i}.intermediate.dense.weight",)),
    ("bert.layers.{i}.mlp.fc1.bias", ("bert.encoder.layer.{i}.intermediate.dense.bias",)),
    ("bert.layers.{i}.mlp.fc2.weight", ("bert.encoder.layer.{i}.output.dense.weight",)),
    ("bert.layers.{i}.mlp.fc2.bias", ("bert.encoder.layer.{i}.output.dense.bias",)),
    ("bert.layers.{i}.mlp_norm.weight", ("bert.encoder.layer.{i}.output.LayerNorm.weight",)),
    ("bert.layers.{i}.mlp_norm.bias", ("bert.encoder.layer.{i}.output.LayerNorm.bias",)),
    ("bert.pooler.weight", ("bert.pooler.dense.weight",)),
    ("bert.pooler.bias", ("bert.pooler.dense.bias",)),
    ("mlm.transform.weight", ("cls.predictions.transform.dense.weight",)),
    ("mlm.transform.bias", ("cls.predictions.transform.dense.bias",)),
    ("mlm.norm.weight", ("cls.predictions.transform.LayerNorm.weight",)),
    ("mlm.norm.bias", ("cls.predictions.transform.LayerNorm.bias",)),
    ("mlm.bias", ("cls.predictions.bias",)),
    ("nsp.weight", ("cls.seq_relationship.weight",)),
    ("nsp.bias", ("cls.seq_relationship.bias",)),
    ("qa.weight", ("qa_outputs.weight",)),
    ("qa.bias", ("qa_outputs.bias",)),
    ("classifier.weight", ("classifier.weight",)),
    ("classifier.bias", ("classifier.bias",)),
]

# Hugging Face keys that duplicate a tied tensor; written on export, ignored on import.
HF_TIED = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}


def expand_table(table: list[tuple], num_layers: int) -> list[tuple]:
    """Replace {i} rows with one row per layer (further columns, such as a layout, pass through)."""
    rows = []
    for ours, theirs, *rest in table:
        layers = range(num_layers) if "{i}" in ours else [None]
        for i in layers:
            rows.append((ours.format(i=i), tuple(t.format(i=i) for t in theirs), *rest))
    return rows


def from_hf(hf_state: dict[str, Tensor], num_layers: int) -> tuple[dict[str, Tensor], list[str]]:
    """Hugging Face state dict -> bertkit names. Returns (state, foreign keys left unused)."""
    out, used = {}, set(HF_TIED)
    for ours, theirs in expand_table(HF_TABLE, num_layers):
        if all(t in hf_state for t in theirs):
            parts = [hf_state[t] for t in theirs]
            out[ours] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
            used.update(theirs)
        elif any(t in hf_state for t in theirs):
            missing = [t for t in theirs if t not in hf_state]
            raise ValueError(f"Hugging Face checkpoint has part of {ours} but lacks {missing}")
    return out, sorted(k for k in hf_state if k not in used)


def to_hf(state: dict[str, Tensor], num_layers: int) -> dict[str, Tensor]:
    """bertkit state dict -> Hugging Face names (fused QKV split back; tied decoder keys written)."""
    out = {}
    for ours, theirs in expand_table(HF_TABLE, num_layers):
        if ours in state:
            for t, part in zip(theirs, state[ours].chunk(len(theirs), dim=0), strict=True):
                out[t] = part.clone() if len(theirs) > 1 else part
    for dup, src in HF_TIED.items():
        if src in out and "cls.predictions.bias" in out:
            out[dup] = out[src]
    return out


# --- Google TensorFlow and OneFlow-Benchmark ------------------------------------------------------------
# Rows gain a third column, the layout of the foreign tensor relative to bertkit's:
SAME = "="  # identical
KERNEL = "T"  # a dense kernel stored (in, out), as x @ W; nn.Linear keeps (out, in): transposed
LEADING_ONE = "1"  # OneFlow's position table carries a broadcast dim: (1, P, H) for our (P, H)

Row = tuple[str, tuple[str, ...], str]

# Google's names: google-research/bert modeling.py (`bert/...`), run_pretraining.py (`cls/predictions`,
# `cls/seq_relationship`: output_weights stored (2, H), i.e. already (out, in)), run_squad.py (`cls/squad`)
# and run_classifier.py (`output_weights`/`output_bias` at the top level). LayerNorm gamma/beta are
# weight/bias. Read only.
TF_TABLE: list[Row] = [
    ("bert.emb.word.weight", ("bert/embeddings/word_embeddings",), SAME),
    ("bert.emb.position.weight", ("bert/embeddings/position_embeddings",), SAME),
    ("bert.emb.token_type.weight", ("bert/embeddings/token_type_embeddings",), SAME),
    ("bert.emb.norm.weight", ("bert/embeddings/LayerNorm/gamma",), SAME),
    ("bert.emb.norm.bias", ("bert/embeddings/LayerNorm/beta",), SAME),
    (
        "bert.layers.{i}.attn.qkv.weight",
        (
            "bert/encoder/layer_{i}/attention/self/query/kernel",
            "bert/encoder/layer_{i}/attention/self/key/kernel",
            "bert/encoder/layer_{i}/attention/self/value/kernel",
        ),
        KERNEL,
    ),
    (
        "bert.layers.{i}.attn.qkv.bias",
        (
            "bert/encoder/layer_{i}/attention/self/query/bias",
            "bert/encoder/layer_{i}/attention/self/key/bias",
            "bert/encoder/layer_{i}/attention/self/value/bias",
        ),
        SAME,
    ),
    ("bert.layers.{i}.attn.proj.weight", ("bert/encoder/layer_{i}/attention/output/dense/kernel",), KERNEL),
    ("bert.layers.{i}.attn.proj.bias", ("bert/encoder/layer_{i}/attention/output/dense/bias",), SAME),
    ("bert.layers.{i}.attn_norm.weight", ("bert/encoder/layer_{i}/attention/output/LayerNorm/gamma",), SAME),
    ("bert.layers.{i}.attn_norm.bias", ("bert/encoder/layer_{i}/attention/output/LayerNorm/beta",), SAME),
    ("bert.layers.{i}.mlp.fc1.weight", ("bert/encoder/layer_{i}/intermediate/dense/kernel",), KERNEL),
    ("bert.layers.{i}.mlp.fc1.bias", ("bert/encoder/layer_{i}/intermediate/dense/bias",), SAME),
    ("bert.layers.{i}.mlp.fc2.weight", ("bert/encoder/layer_{i}/output/dense/kernel",), KERNEL),
    ("bert.layers.{i}.mlp.fc2.bias", ("bert/encoder/layer_{i}/output/dense/bias",), SAME),
    ("bert.layers.{i}.mlp_norm.weight", ("bert/encoder/layer_{i}/output/LayerNorm/gamma",), SAME),
    ("bert.layers.{i}.mlp_norm.bias", ("bert/encoder/layer_{i}/output/LayerNorm/beta",), SAME),
    ("bert.pooler.weight", ("bert/pooler/dense/kernel",), KERNEL),
    ("bert.pooler.bias", ("bert/pooler/dense/bias",), SAME),
    ("mlm.transform.weight", ("cls/predictions/transform/dense/kernel",), KERNEL),
    ("mlm.transform.bias", ("cls/predictions/transform/dense/bias",), SAME),
    ("mlm.norm.weight", ("cls/predictions/transform/LayerNorm/gamma",), SAME),
    ("mlm.norm.bias", ("cls/predictions/transform/LayerNorm/beta",), SAME),
    ("mlm.bias", ("cls/predictions/output_bias",), SAME),
    ("nsp.weight", ("cls/seq_relationship/output_weights",), SAME),
    ("nsp.bias", ("cls/seq_relationship/output_bias",), SAME),
    ("qa.weight", ("cls/squad/output_weights",), SAME),
    ("qa.bias", ("cls/squad/output_bias",), SAME),
    ("classifier.weight", ("output_weights",), SAME),
    ("classifier.bias", ("output_bias",), SAME),
]
# Training state in a TF checkpoint: Adam/LAMB slots beside each variable, and the step counter.
TF_SLOT_SUFFIXES = ("/adam_m", "/adam_v")
TF_STEP = "global_step"

# OneFlow-Benchmark LanguageModeling/BERT: variable names are scopes joined by "-" (bert.py, pretrain.py,
# squad.py, classifier.py); convert_tf_ckpt_to_of.py writes Google's variables under these names, a kernel
# as `-weight`. Dense kernels are (in, out) as in TF; the position table is (1, P, H); the SQuAD head is a
# dense layer `cls-squad-output` with an (H, 2) kernel, unlike Google's (2, H) `output_weights`. Read and write.
OF_TABLE: list[Row] = [
    ("bert.emb.word.weight", ("bert-embeddings-word_embeddings",), SAME),
    ("bert.emb.position.weight", ("bert-embeddings-position_embeddings",), LEADING_ONE),
    ("bert.emb.token_type.weight", ("bert-embeddings-token_type_embeddings",), SAME),
    ("bert.emb.norm.weight", ("bert-embeddings-LayerNorm-gamma",), SAME),
    ("bert.emb.norm.bias", ("bert-embeddings-LayerNorm-beta",), SAME),
    (
        "bert.layers.{i}.attn.qkv.weight",
        (
            "bert-encoder-layer_{i}-attention-self-query-weight",
            "bert-encoder-layer_{i}-attention-self-key-weight",
            "bert-encoder-layer_{i}-attention-self-value-weight",
        ),
        KERNEL,
    ),
    (
        "bert.layers.{i}.attn.qkv.bias",
        (
            "bert-encoder-layer_{i}-attention-self-query-bias",
            "bert-encoder-layer_{i}-attention-self-key-bias",
            "bert-encoder-layer_{i}-attention-self-value-bias",
        ),
        SAME,
    ),
    ("bert.layers.{i}.attn.proj.weight", ("bert-encoder-layer_{i}-attention-output-dense-weight",), KERNEL),
    ("bert.layers.{i}.attn.proj.bias", ("bert-encoder-layer_{i}-attention-output-dense-bias",), SAME),
    ("bert.layers.{i}.attn_norm.weight", ("bert-encoder-layer_{i}-attention-output-LayerNorm-gamma",), SAME),
    ("bert.layers.{i}.attn_norm.bias", ("bert-encoder-layer_{i}-attention-output-LayerNorm-beta",), SAME),
    ("bert.layers.{i}.mlp.fc1.weight", ("bert-encoder-layer_{i}-intermediate-dense-weight",), KERNEL),
    ("bert.layers.{i}.mlp.fc1.bias", ("bert-encoder-layer_{i}-intermediate-dense-bias",), SAME),
    ("bert.layers.{i}.mlp.fc2.weight", ("bert-encoder-layer_{i}-output-dense-weight",), KERNEL),
    ("bert.layers.{i}.mlp.fc2.bias", ("bert-encoder-layer_{i}-output-dense-bias",), SAME),
    ("bert.layers.{i}.mlp_norm.weight", ("bert-encoder-layer_{i}-output-LayerNorm-gamma",), SAME),
    ("bert.layers.{i}.mlp_norm.bias", ("bert-encoder-layer_{i}-output-LayerNorm-beta",), SAME),
    ("bert.pooler.weight", ("bert-pooler-dense-weight",), KERNEL),
    ("bert.pooler.bias", ("bert-pooler-dense-bias",), SAME),
    ("mlm.transform.weight", ("cls-predictions-transform-dense-weight",), KERNEL),
    ("mlm.transform.bias", ("cls-predictions-transform-dense-bias",), SAME),
    ("mlm.norm.weight", ("cls-predictions-transform-LayerNorm-gamma",), SAME),
    ("mlm.norm.bias", ("cls-predictions-transform-LayerNorm-beta",), SAME),
    ("mlm.bias", ("cls-predictions-output_bias",), SAME),
    ("nsp.weight", ("cls-seq_relationship-output_weights",), SAME),
    ("nsp.bias", ("cls-seq_relationship-output_bias",), SAME),
    ("qa.weight", ("cls-squad-output-weight",), KERNEL),
    ("qa.bias", ("cls-squad-output-bias",), SAME),
    ("classifier.weight", ("classification-output_weights",), SAME),
    ("classifier.bias", ("classification-output_bias",), SAME),
]
# Training state in a OneFlow snapshot: optimizer moments `<variable>-m`/`-v`, and the int64 step counter,
# one per job: `System-Train-TrainStep-<job name>`.
OF_SLOT_SUFFIXES = ("-m", "-v")
OF_STEP_PREFIX = "System-Train-TrainStep-"


def to_bertkit_layout(t: Tensor, layout: str) -> Tensor:
    if layout == KERNEL:
        return t.t()
    if layout == LEADING_ONE:
        return t[0]
    return t


def to_foreign_layout(t: Tensor, layout: str) -> Tensor:
    if layout == KERNEL:
        return t.t()
    if layout == LEADING_ONE:
        return t[None]
    return t


def foreign_shapes(table: list[Row], shapes: Mapping[str, tuple[int, ...]], num_layers: int) -> dict[str, tuple]:
    """The shape each foreign variable must have, given bertkit's shapes (from the config)."""
    out = {}
    for ours, theirs, *layout in expand_table(table, num_layers):
        layout = layout[0] if layout else SAME  # the Hugging Face table has no layout column: all SAME
        if ours in shapes:
            part = (shapes[ours][0] // len(theirs), *shapes[ours][1:])  # a fused row splits dim 0 evenly
            for t in theirs:
                out[t] = tuple(to_foreign_layout(torch.empty(part, device="meta"), layout).shape)
    return out


def from_table(table: list[Row], foreign: Mapping[str, Tensor], num_layers: int) -> tuple[dict[str, Tensor], list]:
    """Foreign variables -> bertkit names, one row at a time (so a lazy mapping is read tensor by tensor).

    Returns (state, foreign names left unused). Kernels come out transposed and contiguous.
    """
    out, used = {}, set()
    for ours, theirs, layout in expand_table(table, num_layers):
        present = [t in foreign for t in theirs]
        if all(present):
            parts = [to_bertkit_layout(foreign[t], layout) for t in theirs]
            out[ours] = (parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)).contiguous()
            used.update(theirs)
        elif any(present):
            missing = [t for t, p in zip(theirs, present, strict=True) if not p]
            raise ValueError(f"checkpoint has part of {ours} but lacks {missing}")
    return out, sorted(k for k in foreign if k not in used)


def to_table(table: list[Row], state: Mapping[str, Tensor], num_layers: int) -> dict[str, Tensor]:
    """bertkit state -> foreign names (views: fused rows split, kernels transposed; no copies)."""
    out = {}
    for ours, theirs, layout in expand_table(table, num_layers):
        if ours in state:
            for t, part in zip(theirs, state[ours].chunk(len(theirs), dim=0), strict=True):
                out[t] = to_foreign_layout(part, layout)
    return out


def from_tf(tf_vars: Mapping[str, Tensor], num_layers: int) -> tuple[dict[str, Tensor], list[str]]:
    """Google TF checkpoint variables -> bertkit state. Returns (state, TF names left unused)."""
    return from_table(TF_TABLE, tf_vars, num_layers)


def from_oneflow(of_vars: Mapping[str, Tensor], num_layers: int) -> tuple[dict[str, Tensor], list[str]]:
    """OneFlow snapshot variables (shaped) -> bertkit state. Returns (state, OneFlow names left unused)."""
    return from_table(OF_TABLE, of_vars, num_layers)


def to_oneflow(state: Mapping[str, Tensor], num_layers: int) -> dict[str, Tensor]:
    """bertkit state -> OneFlow-Benchmark variable names and layouts (views)."""
    return to_table(OF_TABLE, state, num_layers)


def training_state(fmt: str, names: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split foreign names into (optimizer slots, step counters); both are skipped on import."""
    names = list(names)
    if fmt == "tf":
        return [n for n in names if n.endswith(TF_SLOT_SUFFIXES)], [n for n in names if n == TF_STEP]
    if fmt == "oneflow":
        return [n for n in names if n.endswith(OF_SLOT_SUFFIXES)], [n for n in names if n.startswith(OF_STEP_PREFIX)]
    return [], []


# --- Hugging Face directories -----------------------------------------------------------------------------
# transformers' BertModel (an encoder alone, as sentence-transformers saves it) drops BertFor*'s "bert."
# prefix; its config.json is Google's keys plus its own bookkeeping.
HF_BASE_PREFIX = "bert."
HF_HEAD_PREFIXES = ("cls.", "qa_outputs.", "classifier.")
HF_ARCHITECTURES = {
    "pretraining": "BertForPreTraining",
    "qa": "BertForQuestionAnswering",
    "classifier": "BertForSequenceClassification",
    "encoder": "BertModel",
}


def hf_full_name(key: str) -> str:
    """A saved Hugging Face key as BertFor* names it (BertModel's keys lack the "bert." prefix)."""
    return key if key.startswith((HF_BASE_PREFIX, *HF_HEAD_PREFIXES)) else HF_BASE_PREFIX + key


def config_from_hf(d: dict, source: str) -> dict:
    """A transformers config.json -> bert_config.json keys; refuses models that are not plain BERT."""
    if d.get("model_type", "bert") != "bert":
        raise ValueError(f"{source}: model_type is {d['model_type']!r}, not 'bert'")
    if d.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{source}: position_embedding_type {d['position_embedding_type']!r} is not supported")
    keep = {f.name for f in dataclasses.fields(BertConfig)}
    return {k: v for k, v in d.items() if k in keep}


def config_to_hf(cfg: BertConfig, architecture: str) -> dict:
    return {**cfg.to_dict(), "model_type": "bert", "architectures": [architecture], "pad_token_id": 0}
