"""Checkpoint name tables: the only place foreign parameter names appear.

One explicit table per foreign format. Each row pairs a bertkit name with the foreign name(s) it comes
from; `{i}` stands for the layer index. A row with several foreign names is a fusion: bertkit's QKV
projection is Hugging Face's query, key and value weights concatenated along the output dimension (dim 0).

Hugging Face names follow transformers' `BertForPreTraining`, `BertForQuestionAnswering` and
`BertForSequenceClassification` (the decoder weight `cls.predictions.decoder.weight` is tied to the word
embeddings and `cls.predictions.decoder.bias` to `cls.predictions.bias`, so bertkit keeps one copy of each).
"""

from __future__ import annotations

import torch
from torch import Tensor

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


def expand_table(table: list[tuple[str, tuple[str, ...]]], num_layers: int) -> list[tuple[str, tuple[str, ...]]]:
    """Replace {i} rows with one row per layer."""
    rows = []
    for ours, theirs in table:
        layers = range(num_layers) if "{i}" in ours else [None]
        for i in layers:
            rows.append((ours.format(i=i), tuple(t.format(i=i) for t in theirs)))
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
