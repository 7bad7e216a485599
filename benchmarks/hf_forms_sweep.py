"""Issue 28's sweep as a measurement: the largest difference between transformers' outputs and bertkit's, for
each BERT class transformers saves and each file form, on a tiny random model (hidden 32, 2 layers, vocab 99).
One JSON line per case.

    python benchmarks/hf_forms_sweep.py > benchmarks/results/2026-12-05-hf_forms.jsonl
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
import transformers

from bertkit.checkpoint.formats import load_into
from bertkit.model.bert import BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification
from bertkit.model.config import BertConfig

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip


def save(hf, d: Path, form: str) -> None:
    """transformers' own save for safetensors; transformers 4's (torch.save of the state dict) for .bin."""
    if form.startswith("safetensors"):
        hf.save_pretrained(d, max_shard_size="20KB" if form.endswith("sharded") else "5GB")
        return
    hf.config.save_pretrained(d)
    state = hf.state_dict()
    if form == "bin":
        torch.save(state, d / "pytorch_model.bin")
        return
    names, weight_map = list(state), {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
        torch.save({k: state[k] for k in part}, d / f"pytorch_model-{i + 1}.bin")
        weight_map |= dict.fromkeys(part, f"pytorch_model-{i + 1}.bin")
    (d / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))


def outputs(name: str, model, ids, types, mask, ours: bool) -> list[torch.Tensor]:
    with torch.no_grad():
        if not ours:
            out = model(input_ids=ids, token_type_ids=types, attention_mask=mask)
            keys = ("last_hidden_state", "pooler_output", "prediction_logits", "seq_relationship_logits", "logits",
                    "start_logits", "end_logits")  # fmt: skip
            return [getattr(out, k) for k in keys if getattr(out, k, None) is not None]
        if name == "BertModel":
            return list(model.bert(ids, types, mask))
        out = model(ids, types, mask)
        return [out[0]] if name == "BertForMaskedLM" else list(out) if isinstance(out, tuple) else [out]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor], mask) -> float:
    keep = mask.bool()
    return max(float((x - y)[keep if x.dim() >= 2 and x.shape[:2] == mask.shape else ...].abs().max())
               for x, y in zip(a, b, strict=True))  # fmt: skip


def ours_for(name: str, cfg: BertConfig):
    if name == "BertForSequenceClassification":
        return BertForSequenceClassification(cfg, num_labels=3)
    return BertForQuestionAnswering(cfg) if name == "BertForQuestionAnswering" else BertForPreTraining(cfg)


def main() -> None:
    cfg = BertConfig(**TINY)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 99, (3, 11), generator=g)
    mask = (torch.arange(11)[None] < torch.tensor([[11], [7], [4]])).long()
    types = (torch.arange(11)[None] >= 5).long() * mask
    for name in ("BertModel", "BertForPreTraining", "BertForMaskedLM", "BertForSequenceClassification",
                 "BertForQuestionAnswering"):  # fmt: skip
        for form in ("safetensors", "safetensors-sharded", "bin", "bin-sharded"):
            torch.manual_seed(0)
            extra = {"num_labels": 3} if name == "BertForSequenceClassification" else {}
            hf = getattr(transformers, name)(transformers.BertConfig(**TINY, **extra)).eval()
            with tempfile.TemporaryDirectory() as d:
                save(hf, Path(d), form)
                ours = ours_for(name, cfg).eval()
                report = load_into(ours, d)
                diff = max_diff(
                    outputs(name, ours, ids, types, mask, True), outputs(name, hf, ids, types, mask, False), mask
                )
            print(json.dumps({"bench": "hf_forms", "class": name, "form": form, "max_abs_diff": diff,
                              "tensors": len(report.fate), "transformers": transformers.__version__}))  # fmt: skip


if __name__ == "__main__":
    transformers.logging.set_verbosity_error()
    main()
