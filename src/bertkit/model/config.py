"""BertConfig: the keys of Google's `bert_config.json`, typed and validated.

Reference: google-research/bert `modeling.BertConfig`. The field names are Google's, so a released
`bert_config.json` loads unchanged; `layer_norm_eps` is added (Google hard-codes 1e-12). Unknown keys
(Hugging Face writes `model_type`, `architectures`, ...) are ignored with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from dataclasses import dataclass, field

ACTIVATIONS = ("gelu", "relu", "tanh", "gelu_new", "gelu_pytorch_tanh")


@dataclass
class BertConfig:
    vocab_size: int = field(default=30522, metadata={"help": "WordPiece vocabulary size"})
    hidden_size: int = field(default=768, metadata={"help": "width of every token vector"})
    num_hidden_layers: int = field(default=12, metadata={"help": "number of encoder layers"})
    num_attention_heads: int = field(default=12, metadata={"help": "attention heads per layer"})
    intermediate_size: int = field(default=3072, metadata={"help": "width of the feed-forward layer"})
    hidden_act: str = field(default="gelu", metadata={"help": f"activation, one of {', '.join(ACTIVATIONS)}"})
    hidden_dropout_prob: float = field(default=0.1, metadata={"help": "dropout on embeddings and outputs"})
    attention_probs_dropout_prob: float = field(default=0.1, metadata={"help": "dropout on attention weights"})
    max_position_embeddings: int = field(default=512, metadata={"help": "longest sequence the model takes"})
    type_vocab_size: int = field(default=2, metadata={"help": "number of token types (segments)"})
    initializer_range: float = field(default=0.02, metadata={"help": "std of the truncated-normal init"})
    layer_norm_eps: float = field(default=1e-12, metadata={"help": "LayerNorm epsilon (Google: 1e-12)"})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, source: str = "BertConfig") -> None:
        """Raise ValueError naming `source` (a file or 'BertConfig') and the offending key."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            want = {"int": int, "float": float, "str": str}[f.type]
            # JSON has no int/float distinction for 0.1 vs 1; an int is a fine float, a bool is not a number.
            ok = isinstance(value, want) and not isinstance(value, bool)
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if not ok:
                raise ValueError(f"{source}: key '{f.name}' must be {f.type}, got {value!r}")
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{source}: key '{name}' must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"{source}: key 'hidden_size' ({self.hidden_size}) must be divisible by "
                f"'num_attention_heads' ({self.num_attention_heads})"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{source}: key '{name}' must be in [0, 1), got {p}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"{source}: key 'hidden_act' is {self.hidden_act!r}, expected one of {', '.join(ACTIVATIONS)}"
            )
        if not (self.initializer_range > 0 and math.isfinite(self.initializer_range)):
            raise ValueError(f"{source}: key 'initializer_range' must be positive, got {self.initializer_range}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"{source}: key 'layer_norm_eps' must be positive, got {self.layer_norm_eps}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # --- Google's bert_config.json -------------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> BertConfig:
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            warnings.warn(f"{source}: ignoring unknown keys {unknown}", stacklevel=2)
        # layer_norm_eps is ours; every other key is required, as in Google's files.
        missing = [k for k in known - {"layer_norm_eps"} if k not in d]
        if missing:
            raise ValueError(f"{source}: missing key '{sorted(missing)[0]}'")
        cfg = cls.__new__(cls)
        for f in dataclasses.fields(cls):
            setattr(cfg, f.name, d.get(f.name, f.default))
        cfg.validate(source)
        return cfg

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> BertConfig:
        return cls.from_dict(read_json(path), source=str(path))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json_file(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2, sort_keys=True)
            fh.write("\n")

    @classmethod
    def from_head_size(
        cls, num_attention_heads: int, hidden_size_per_head: int, intermediate_size: int | None = None, **kw
    ) -> BertConfig:
        """The seed's sizing: hidden = heads x per-head size, FFN = 4 x hidden unless given."""
        if hidden_size_per_head <= 0:
            raise ValueError(f"--hidden_size_per_head must be positive, got {hidden_size_per_head}")
        hidden = num_attention_heads * hidden_size_per_head
        return cls(
            num_attention_heads=num_attention_heads,
            hidden_size=hidden,
            intermediate_size=intermediate_size if intermediate_size is not None else 4 * hidden,
            **kw,
        )


def read_json(path: str | os.PathLike) -> object:
    """A model config file's JSON; ValueError naming the file when it is missing, unreadable, not UTF-8 or not JSON."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise ValueError(f"{path}: config file not found") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a config file: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read the config file ({e.strerror or e})") from None
