"""--quantize int8 (torch's dynamic int8 Linear layers, `runtime.precision.quantize`): close to fp32 for ask,
squad-predict and classify, while fp32 (the default) stays exact and its model untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from serve_fixtures import CONTEXT
from test_classifier import write_rte

from bertkit.cli import main
from bertkit.runtime.precision import quantize
from bertkit.serve.qa import Query, QuestionAnswerer


def quantized(model: torch.nn.Module) -> bool:
    return any("quantized" in type(m).__module__ for m in model.modules())


def test_int8_logits_are_close_and_fp32_is_untouched(tiny_qa_dir, tiny_qa):
    int8 = QuestionAnswerer.from_pretrained(tiny_qa_dir, device="cpu", quantize="int8")
    assert quantized(int8.model) and not quantized(tiny_qa.model)
    p = tiny_qa.prepare([Query("Who won?", CONTEXT), Query("Who lost?", CONTEXT)])
    (s32, e32), (s8, e8) = tiny_qa.logits(*p.inputs), int8.logits(*p.inputs)
    real = p.features.input_mask.astype(bool)
    scale = np.abs(s32[real]).max()
    assert np.abs(s32[real] - s8[real]).max() < 0.1 * scale and np.abs(e32[real] - e8[real]).max() < 0.1 * scale
    with pytest.raises(ValueError, match="--quantize"):
        quantize(tiny_qa.model, "int4")


def test_squad_predict_with_int8(tiny_qa_dir, tmp_path):
    data = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": CONTEXT, "qas": [
        {"id": "q1", "question": "Who won?", "answers": [{"text": "Denver Broncos", "answer_start": 4}]},
        {"id": "q2", "question": "Who lost?", "answers": [{"text": "Carolina Panthers", "answer_start": 32}]}]}]}]}  # fmt: skip
    (tmp_path / "dev.json").write_text(json.dumps(data))
    results = {}
    for mode in ("none", "int8"):
        out = tmp_path / mode
        argv = ["squad-predict", "--init_checkpoint", str(tiny_qa_dir), "--predict_file", str(tmp_path / "dev.json"),
                "--output_dir", str(out), "--device", "cpu", "--quantize", mode]  # fmt: skip
        assert main(argv) == 0
        results[mode] = np.load(out / "all_results.npy")
    a, b = results["none"]["start_logits"], results["int8"]["start_logits"]
    real = np.isfinite(a)
    assert (np.isfinite(b) == real).all() and np.abs(a[real] - b[real]).max() < 0.1 * np.abs(a[real]).max()


def test_classify_do_predict_with_int8(tmp_path):
    d = write_rte(tmp_path / "RTE")
    probs = {}
    for mode in ("none", "int8"):
        argv = ["classify", "--task_name", "rte", "--do_predict", "--data_dir", str(d), "--vocab_file",
                str(d / "vocab.txt"), "--bert_config_file", str(d / "tiny.json"), "--max_seq_length", "24",
                "--output_dir", str(tmp_path / mode), "--device", "cpu", "--quantize", mode]  # fmt: skip
        assert main(argv) == 0
        rows = (tmp_path / mode / "test_results.tsv").read_text().splitlines()
        probs[mode] = np.array([[float(x) for x in row.split("\t")] for row in rows])
    assert np.abs(probs["none"] - probs["int8"]).max() < 0.05
