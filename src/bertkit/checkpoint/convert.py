"""Checkpoint name tables: the only place foreign parameter names appear.

One explicit table per foreign format. Each row pairs a bertkit name with the foreign name(s) it comes
from; `{i}` stands for the layer index. A row with several foreign names is a fusion: bertkit's QKV
projection is Hugging Face's query, key and value weights concatenated along the output dimension (dim 0).

Hugging Face names follow transformers' `BertForPreTraining`, `BertForMaskedLM`, `BertForQuestionAnswering` and
`BertForSequenceClassification` (the decoder weight `cls.predictions.decoder.weight` is tied to the word
embeddings and `cls.predictions.decoder.bias` to `cls.predictions.bias`, so bertkit keeps one copy of each);
`map_hf` states the rule for every other key a file may hold (BertModel's unprefixed keys, legacy LayerNorm
gamma/beta, buffers, an untied decoder): a key no rule covers is the loader's error, never silently dropped.
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

# Hugging Face keys that duplicate a tied tensor: written on export (pytorch_model.bin), checked on import.
HF_TIED = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}
HF_DECODER, HF_DECODER_BIAS = "cls.predictions.decoder.weight", "cls.predictions.decoder.bias"
# Not a bertkit parameter: an untied MLM decoder (`tie_word_embeddings: false`) read under this name, so that the
# loader can refuse it where the MLM head is used (bertkit's decoder is the word embeddings, as Google's) and drop
# it, by the rule for heads a model lacks, where it is not (a classifier or QA model fine-tuned from it).
UNTIED_DECODER = "mlm.decoder.weight"
# Buffers transformers registers in BertEmbeddings and some versions save: arange(P) and zeros, recomputed here.
HF_BUFFERS = {
    "bert.embeddings.position_ids": "a buffer (0, 1, ..., P-1): positions are computed",
    "bert.embeddings.token_type_ids": "a buffer (zeros): the default token types are computed",
}
# pytorch-pretrained-bert's LayerNorm names, which google-bert/bert-base-uncased's own pytorch_model.bin still has;
# transformers renames them on load (modeling_utils), and so does `hf_name`.
HF_LEGACY_SUFFIXES = {"LayerNorm.gamma": "LayerNorm.weight", "LayerNorm.beta": "LayerNorm.bias"}
# transformers' BertModel (an encoder alone, as sentence-transformers saves it) drops BertFor*'s "bert." prefix.
HF_BASE_PREFIX = "bert."
HF_BASE_PARTS = ("embeddings.", "encoder.", "pooler.")


def expand_table(table: list[tuple], num_layers: int) -> list[tuple]:
    """Replace {i} rows with one row per layer (further columns, such as a layout, pass through)."""
    rows = []
    for ours, theirs, *rest in table:
        layers = range(num_layers) if "{i}" in ours else [None]
        for i in layers:
            rows.append((ours.format(i=i), tuple(t.format(i=i) for t in theirs), *rest))
    return rows


def hf_name(key: str) -> str:
    """A saved Hugging Face key as BertFor* names it today: "bert." added to BertModel's keys, legacy LayerNorm
    gamma/beta read as weight/bias."""
    if key.startswith(HF_BASE_PARTS):
        key = HF_BASE_PREFIX + key
    for old, new in HF_LEGACY_SUFFIXES.items():
        if key.endswith(old):
            return key[: -len(old)] + new
    return key


def hf_names(keys: Iterable[str], source: str = "checkpoint") -> dict[str, str]:
    """{name as BertFor* names it: saved key}; ValueError when two saved keys name one tensor (gamma and weight)."""
    out: dict[str, str] = {}
    for key in keys:
        name = hf_name(key)
        if name in out:
            raise ValueError(f"{source}: {out[name]!r} and {key!r} are both {name}: which one is meant is ambiguous")
        out[name] = key
    return out


def from_hf(hf_state: Mapping[str, Tensor], num_layers: int) -> tuple[dict[str, Tensor], list[str]]:
    """Hugging Face state dict -> bertkit names. Returns (state, keys no rule covers). See `map_hf`."""
    state, _, unknown = map_hf(hf_state, num_layers)
    return state, unknown


def map_hf(hf_state: Mapping[str, Tensor], num_layers: int) -> tuple[dict[str, Tensor], dict[str, str], list[str]]:
    """Hugging Face state dict (any of BertModel's and BertFor*'s key forms) -> (state in bertkit names, {key: why
    it is not loaded} for the keys an explicit rule drops, keys no rule covers).

    The rules: buffers (`HF_BUFFERS`); a decoder weight or bias equal to the tensor it is tied to. A lone
    `cls.predictions.decoder.bias` is the MLM bias. A decoder bias unlike `cls.predictions.bias` is an error (the
    two are one parameter in transformers; Google has one output_bias); a decoder weight unlike the word embeddings
    comes back as `UNTIED_DECODER`. Raises ValueError for part of a fused QKV row.
    """
    names = hf_names(hf_state)
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for ours, theirs in expand_table(HF_TABLE, num_layers):
        present = [t in names for t in theirs]
        if all(present):
            parts = [hf_state[names[t]] for t in theirs]
            out[ours] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
            used.update(theirs)
        elif any(present):
            missing = [t for t, p in zip(theirs, present, strict=True) if not p]
            raise ValueError(f"Hugging Face checkpoint has part of {ours} but lacks {missing}")
    rules = {names[k]: why for k, why in HF_BUFFERS.items() if k in names}
    if HF_DECODER_BIAS in names:
        bias = hf_state[names[HF_DECODER_BIAS]]
        if "mlm.bias" not in out:  # a file that kept only the decoder's name for the one bias
            out["mlm.bias"] = bias
        elif torch.equal(bias, out["mlm.bias"]):
            rules[names[HF_DECODER_BIAS]] = "tied to cls.predictions.bias (equal)"
        else:
            raise ValueError(
                f"{HF_DECODER_BIAS} differs from cls.predictions.bias: transformers holds them as one "
                "parameter and which one it loads is ambiguous; Google's MLM has one output_bias"
            )
        used.add(HF_DECODER_BIAS)
    if HF_DECODER in names:
        dec, word = hf_state[names[HF_DECODER]], out.get("bert.emb.word.weight")
        if word is not None and dec.shape == word.shape and torch.equal(dec, word):
            rules[names[HF_DECODER]] = "tied to the word embeddings (equal)"
        else:
            out[UNTIED_DECODER] = dec
        used.add(HF_DECODER)
    unknown = sorted(saved for name, saved in names.items() if name not in used and saved not in rules)
    return out, rules, unknown


def untied_decoder_error(state: Mapping[str, Tensor]) -> str:
    """The one line that refuses an untied MLM decoder where the MLM head would use it."""
    dec, word = state[UNTIED_DECODER], state.get("bert.emb.word.weight")
    how = f"up to {float((dec - word).abs().max()):.3g}" if word is not None and dec.shape == word.shape else "shape"
    return (
        f"{HF_DECODER} differs from the word embeddings ({how}; an untied decoder, tie_word_embeddings false): "
        "bertkit's MLM decoder is the word embeddings, as Google's, so its MLM logits would differ; refused. "
        "Fine-tuning (classify, squad) drops the MLM head and may load it"
    )


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


# --- Hugging Face configs --------------------------------------------------------------------------------
HF_ARCHITECTURES = {
    "pretraining": "BertForPreTraining",
    "qa": "BertForQuestionAnswering",
    "classifier": "BertForSequenceClassification",
    "encoder": "BertModel",
}
# What `architectures` may name on import: these heads are bertkit's (BertForMaskedLM is BertForPreTraining without
# the pooler and NSP). Others reuse the names for another meaning (BertForTokenClassification's `classifier` is per
# token, BertLMHeadModel is a causal decoder), so they are refused rather than misread.
HF_READ_ARCHITECTURES = (*HF_ARCHITECTURES.values(), "BertForMaskedLM", "BertForNextSentencePrediction")


def config_from_hf(d: dict, source: str) -> dict:
    """A transformers config.json -> bert_config.json keys; refuses models that are not plain BERT."""
    if d.get("model_type", "bert") != "bert":
        raise ValueError(f"{source}: model_type is {d['model_type']!r}, not 'bert'")
    if d.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{source}: position_embedding_type {d['position_embedding_type']!r} is not supported")
    if d.get("is_decoder") or d.get("add_cross_attention"):
        raise ValueError(f"{source}: a causal decoder (is_decoder / add_cross_attention); bertkit's BERT is an encoder")
    other = [a for a in d.get("architectures") or [] if a not in HF_READ_ARCHITECTURES]
    if other:
        raise ValueError(f"{source}: architectures {other}: bertkit reads {', '.join(HF_READ_ARCHITECTURES)}; "
                         "another head would be misread")  # fmt: skip
    keep = {f.name for f in dataclasses.fields(BertConfig)}
    return {k: v for k, v in d.items() if k in keep}


def config_to_hf(cfg: BertConfig, architecture: str) -> dict:
    return {**cfg.to_dict(), "model_type": "bert", "architectures": [architecture], "pad_token_id": 0}
