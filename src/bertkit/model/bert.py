"""The BERT model and its task heads: tensors in, tensors out (no I/O, no losses, no parallelism).

Reference: Devlin et al. 2018 and google-research/bert `modeling.py` (post-LN encoder, erf GELU,
LayerNorm eps 1e-12, truncated-normal init). Names are our own; the foreign names of Google, Hugging Face
and OneFlow checkpoints live only in `bertkit.checkpoint.convert`.

Shape legend: B batch, T tokens, H hidden, N heads, D head dim (H = N * D), I intermediate (FFN),
P masked positions per sequence, V vocabulary, N_tok real (unpadded) tokens of a batch (`bertkit.model.padding`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.model.config import BertConfig
from bertkit.model.padding import Unpadded


def activation(name: str):
    """The activations a Google bert_config.json may name."""
    if name == "gelu":  # Google's gelu is the exact erf form
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):  # the tanh approximation (Google's original `gelu`)
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    if name == "tanh":
        return torch.tanh
    raise ValueError(f"unknown hidden_act {name!r}")


class Embeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor, unpadded: Unpadded | None = None) -> Tensor:
        """(B, T) ids -> (B, T, H); with `unpadded`, the real tokens only: (N_tok, H)."""
        if unpadded is not None:
            ids, types = unpadded.unpad(input_ids), unpadded.unpad(token_type_ids)  # (N_tok,)
            x = self.word(ids) + self.token_type(types) + self.position(unpadded.positions())  # (N_tok, H)
            return self.drop(self.norm(x))
        T = input_ids.shape[1]
        x = self.word(input_ids) + self.token_type(token_type_ids)  # (B, T, H)
        x = x + self.position.weight[:T]  # (T, H) broadcast over B
        return self.drop(self.norm(x))


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, dropout_p: float) -> Tensor:
    """softmax(q k^T / sqrt(D)) v spelled out: (B, N, T, D) -> (B, N, T, D).

    The CPU training fast path. There, SDPA's fused kernel has a slow backward and, with dropout, SDPA falls back
    to its math path, which upcasts bf16 to fp32; these plain matmuls stay in the autocast dtype and are
    measured 1.5-3x faster per attention call (benchmarks/bench_model.py). Tested equal to SDPA.
    """
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # (B, N, T, T)
    if attn_mask is not None:  # True = may attend; finfo.min rather than -inf keeps a row finite
        # In place: backward needs q and k, not their product, so no copy is made (masked_fill would copy the
        # (B, N, T, T) scores first): the same bits, attention 1.13x faster (benchmarks/bench_mask.py).
        scores.masked_fill_(~attn_mask, torch.finfo(scores.dtype).min)
    probs = F.dropout(scores.softmax(-1), dropout_p)
    return probs.to(v.dtype) @ v


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection (H -> 3H) and SDPA.

    `explicit` (this module's, set on an instance) chooses the attention arithmetic: None (default) means SDPA except
    when training on the CPU, where `explicit_attention` is faster; True/False force one or the other (tests
    compare the two).
    """

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.explicit: bool | None = None
        self.n_heads = cfg.num_attention_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.attn_dropout = cfg.attention_probs_dropout_prob

    def forward(
        self, x: Tensor, attn_mask: Tensor | None, query_idx: Tensor | None = None, unpadded: Unpadded | None = None
    ) -> Tensor:
        """x (B, T, H) -> (B, T, H); with query_idx (B, Q) only those tokens ask (keys and values are all T),
        giving (B, Q, H): the last layer of pretraining needs only [CLS] and the masked positions. With `unpadded`,
        x is the batch's real tokens (N_tok, H) -> (N_tok, H): each sequence attends over its own tokens alone."""
        H = x.shape[-1]
        N, D = self.n_heads, H // self.n_heads
        if unpadded is not None and unpadded.spans is not None:  # each length's sequences side by side: slices
            qkv = self.qkv(x)  # (N_tok, 3H)
            y = qkv.new_empty((x.shape[0], H))  # (N_tok, H), in the attention's dtype (bf16 under autocast)
            for L, start, n in unpadded.spans:
                q, k, v = qkv.narrow(0, start, n).view(-1, L, 3, N, D).permute(2, 0, 3, 1, 4)  # 3 x (G, N, L, D)
                y.narrow(0, start, n).view(-1, L, N, D).copy_(self.attend(q, k, v, None).transpose(1, 2))
            return self.proj(y)  # (N_tok, H)
        if unpadded is not None:
            qkv, ys = self.qkv(x), []  # (N_tok, 3H)
            for L, rows in unpadded.groups:  # the G sequences of length L together: no padding, no mask
                q, k, v = qkv.index_select(0, rows).view(-1, L, 3, N, D).permute(2, 0, 3, 1, 4)  # 3 x (G, N, L, D)
                ys.append(self.attend(q, k, v, None).transpose(1, 2).reshape(-1, H))  # (G * L, H)
            return self.proj(torch.cat(ys).index_select(0, unpadded.restore))  # (N_tok, H), in batch order
        B, T, _ = x.shape
        if query_idx is None:
            # (B, T, 3H) -> (B, T, 3, N, D) -> (3, B, N, T, D)
            q, k, v = self.qkv(x).view(B, T, 3, N, D).permute(2, 0, 3, 1, 4)
        else:  # the fused weight's rows are [q; k; v]: project q for Q tokens, k and v for all T
            w, b = self.qkv.weight, self.qkv.bias
            xq = gather_positions(x, query_idx)  # (B, Q, H)
            q = F.linear(xq, w[:H], b[:H]).view(B, -1, N, D).transpose(1, 2)  # (B, N, Q, D)
            k, v = F.linear(x, w[H:], b[H:]).view(B, T, 2, N, D).permute(2, 0, 3, 1, 4)  # 2 x (B, N, T, D)
        y = self.attend(q, k, v, attn_mask)  # (B, N, T or Q, D)
        return self.proj(y.transpose(1, 2).reshape(B, -1, H))  # (B, T or Q, H)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None) -> Tensor:
        """(..., Q, D), (..., T, D), (..., T, D) -> (..., Q, D), by `explicit_attention` or SDPA (see the class)."""
        p = self.attn_dropout if self.training else 0.0
        explicit = self.explicit
        if explicit is None:
            explicit = q.device.type == "cpu" and torch.is_grad_enabled()
        if explicit:
            return explicit_attention(q, k, v, attn_mask, p)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)


class MLP(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.act = activation(cfg.hidden_act)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))  # (B, T, H) -> (B, T, I) -> (B, T, H)


class EncoderLayer(nn.Module):
    """Post-LN block, as in BERT: x = norm(x + drop(sublayer(x)))."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)
        self.mlp_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(
        self, x: Tensor, attn_mask: Tensor | None, query_idx: Tensor | None = None, unpadded: Unpadded | None = None
    ) -> Tensor:
        """(B, T, H) -> (B, T, H), or (B, Q, H) at query_idx (B, Q), or (N_tok, H) -> (N_tok, H) unpadded: see
        SelfAttention."""
        h = x if query_idx is None else gather_positions(x, query_idx)
        h = self.attn_norm(h + self.drop(self.attn(x, attn_mask, query_idx, unpadded)))
        return self.mlp_norm(h + self.drop(self.mlp(h)))


class Bert(nn.Module):
    """The encoder: returns the sequence output (B, T, H) and the pooled first token (B, H).

    `unpad` chooses the fast path that computes real tokens only (`bertkit.model.padding`; heads may then also ask the
    last layer for [CLS] alone): None (default) takes it when no gradient is taken (prediction, evaluation: equal
    to the padded path within 1e-5) and keeps the padded path, the reference mode, in training; True/False force
    it (a task's `--unpad` flag). Tests compare the two. It is this encoder's: set on the instance (the model
    builder, train/build.py, sets it from the run's flags), never on the class.
    """

    def __init__(self, cfg: BertConfig, pooler: bool = True):
        super().__init__()
        self.unpad: bool | None = None
        self.cfg = cfg
        self.emb = Embeddings(cfg)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size) if pooler else None

    def fast_path(self) -> bool:
        """Whether this forward computes real tokens only: `unpad`, or when None, whether gradients are off."""
        return self.unpad if self.unpad is not None else not torch.is_grad_enabled()

    def check_inputs(self, input_ids: Tensor, token_type_ids: Tensor, input_mask: Tensor | None) -> None:
        """Shapes only: checking id values would need a host sync every step (the loaders check them in numpy)."""
        cfg = self.cfg
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq_len), got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] > cfg.max_position_embeddings:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings {cfg.max_position_embeddings}"
            )
        if token_type_ids.shape != input_ids.shape:
            raise ValueError(
                f"token_type_ids has shape {tuple(token_type_ids.shape)}, input_ids {tuple(input_ids.shape)}"
            )
        if input_mask is not None and input_mask.shape != input_ids.shape:
            raise ValueError(f"input_mask has shape {tuple(input_mask.shape)}, input_ids {tuple(input_ids.shape)}")

    def forward(
        self,
        input_ids: Tensor,
        token_type_ids: Tensor | None = None,
        input_mask: Tensor | None = None,
        output_positions: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Sequence output (B, T, H) and pooled [CLS] (B, H).

        With output_positions (B, P) the sequence output is returned only there, (B, P, H), and the last layer
        computes only those tokens and [CLS] (its keys and values still see every token): the fast path of
        pretraining, where the heads read nothing else. Tested equal to gathering the full output.
        Outputs at padding positions (input_mask 0) are unspecified: zeros on the fast path (`unpad`), whatever
        attention gave them on the padded path; real positions are equal on both.
        """
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        self.check_inputs(input_ids, token_type_ids, input_mask)
        attn_mask = None
        # input_mask: 1 = token, 0 = pad (the seed's records). Callers whose batch has no pad pass None, so that
        # SDPA can take its unmasked (fastest) kernel; the result is the same either way (tested). The model does
        # not look for itself: that would be a host sync every step.
        if input_mask is not None:
            attn_mask = input_mask.bool()[:, None, None, :]  # (B, 1, 1, T): True = may attend
        # the fast path, unless no mask is given or it has holes (from_mask gives None): then the padded path
        unpadded = Unpadded.from_mask(input_mask) if input_mask is not None and self.fast_path() else None
        x = self.emb(input_ids, token_type_ids, unpadded)  # (B, T, H), or (N_tok, H) unpadded
        last = len(self.layers) - 1
        query_idx = None
        if output_positions is not None:  # [CLS] first, then the requested positions: (B, 1 + P)
            B = input_ids.shape[0]
            query_idx = torch.cat([input_ids.new_zeros(B, 1), output_positions.long()], 1)
        for i, layer in enumerate(self.layers):
            if i == last and query_idx is not None and unpadded is not None:  # query_idx indexes (B, T): pad back
                x, unpadded = unpadded.pad(x), None
            x = layer(x, attn_mask, query_idx if i == last else None, unpadded)
        if unpadded is not None:
            x = unpadded.pad(x)  # (B, T, H), zeros at padding
        pooled = torch.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None  # (B, H)
        return (x if query_idx is None else x[:, 1:]), pooled


def init_weights(module: nn.Module, std: float) -> None:
    """Google's init: truncated normal(std) in [-2std, 2std] for weights, zeros for biases, LayerNorm 1/0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class MLMHead(nn.Module):
    """Transform (dense + act + LayerNorm), then a decoder tied to the word embeddings, plus a bias."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.transform = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = activation(cfg.hidden_act)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h: Tensor, word_emb: Tensor) -> Tensor:
        h = self.norm(self.act(self.transform(h)))  # (..., H)
        return F.linear(h, word_emb, self.bias)  # (..., V)


def gather_positions(x: Tensor, positions: Tensor) -> Tensor:
    """(B, T, H) at (B, P) token indices -> (B, P, H)."""
    B, P = positions.shape
    return x.gather(1, positions.long()[:, :, None].expand(B, P, x.shape[-1]))


class BertForPreTraining(nn.Module):
    """Masked LM + next-sentence prediction heads on the encoder."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.bert = Bert(cfg)
        self.mlm = MLMHead(cfg)
        self.nsp = nn.Linear(cfg.hidden_size, 2)
        init_weights(self, cfg.initializer_range)

    def forward(
        self,
        input_ids: Tensor,
        token_type_ids: Tensor | None = None,
        input_mask: Tensor | None = None,
        masked_positions: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Returns MLM logits and NSP logits (B, 2).

        With `masked_positions` (B, P) the vocabulary projection runs only there (sparse): logits (B, P, V).
        Without it, it runs over every token (dense): logits (B, T, V).
        """
        x, pooled = self.bert(input_ids, token_type_ids, input_mask, masked_positions)  # (B, P or T, H)
        return self.mlm(x, self.bert.emb.word.weight), self.nsp(pooled)


class BertForQuestionAnswering(nn.Module):
    """Span QA: a linear H -> 2 over every token gives start and end logits, each (B, T)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.bert = Bert(cfg, pooler=False)
        self.qa = nn.Linear(cfg.hidden_size, 2)
        init_weights(self, cfg.initializer_range)

    def forward(
        self, input_ids: Tensor, token_type_ids: Tensor | None = None, input_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        x, _ = self.bert(input_ids, token_type_ids, input_mask)
        start, end = self.qa(x).unbind(-1)  # (B, T, 2) -> 2 x (B, T)
        return start, end


class BertForSequenceClassification(nn.Module):
    """Dropout + linear on the pooled output: logits (B, num_labels)."""

    def __init__(self, cfg: BertConfig, num_labels: int = 2):
        super().__init__()
        if num_labels <= 0:
            raise ValueError(f"num_labels must be positive, got {num_labels}")
        self.cfg = cfg
        self.bert = Bert(cfg)
        self.drop = nn.Dropout(cfg.hidden_dropout_prob)
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)
        init_weights(self, cfg.initializer_range)

    def forward(
        self, input_ids: Tensor, token_type_ids: Tensor | None = None, input_mask: Tensor | None = None
    ) -> Tensor:
        # on the fast path the last layer computes [CLS] alone (no other position is asked for: P = 0)
        cls_only = input_ids.new_zeros(input_ids.shape[0], 0) if self.bert.fast_path() else None
        _, pooled = self.bert(input_ids, token_type_ids, input_mask, cls_only)
        return self.classifier(self.drop(pooled))


def num_parameters(model: nn.Module) -> int:
    """Unique parameters (the tied decoder counts once)."""
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "Bert",
    "BertConfig",
    "BertForPreTraining",
    "BertForQuestionAnswering",
    "BertForSequenceClassification",
    "gather_positions",
    "init_weights",
    "num_parameters",
]
