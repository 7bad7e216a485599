"""--quantize int8 (`runtime.precision.quantize`: the encoder's Linear layers in dynamic int8, per-channel weights,
the FFN's outlier rows in fp32, packed for oneDNN with AVX512-VNNI): the chosen layers are the ones quantized, `Int8Linear` equals its plain parts, and
the answers are close to fp32 for ask, squad-predict and classify, while fp32 (the default) stays exact and its
model untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from serve_fixtures import CONTEXT
from test_classifier import write_rte

from bertkit.cli import main
from bertkit.runtime.int8 import Int8Linear, outlier_rows
from bertkit.runtime.precision import int8_layers, quantize
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


@pytest.mark.parametrize("vnni", [True, False])
def test_int8_quantizes_the_encoder_layers_by_the_cpus_policy_and_no_head(tiny_qa, monkeypatch, vnni):
    """Weights per channel and the FFN's outlier rows in fp32 on every CPU; activations in 8 bits with AVX512-VNNI,
    7 without. The heads stay fp32 either way."""
    import bertkit.runtime.int8 as int8_module

    monkeypatch.setattr(int8_module, "full_range_activations", lambda: vnni)
    fp32 = tiny_qa.model
    n = fp32.bert.cfg.num_hidden_layers
    expected = {f"bert.layers.{i}.{name}" for i in range(n) for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}
    assert set(int8_layers(fp32)) == expected
    last_qkv = f"bert.layers.{n - 1}.attn.qkv"
    int8 = quantize(fp32, "int8", keep=frozenset({last_qkv}))
    layers = dict(int8.named_modules())
    assert {name for name, m in layers.items() if isinstance(m, Int8Linear)} == expected - {last_qkv}
    assert type(layers[last_qkv]) is torch.nn.Linear and type(layers["qa"]) is torch.nn.Linear  # fp32
    for name in expected - {last_qkv}:
        assert layers[name].weight().qscheme() == torch.per_channel_affine
        assert layers[name].reduce_range is (not vnni)
        split = name.endswith(("mlp.fc1", "mlp.fc2"))  # outlier rows in fp32: the FFN only
        assert (layers[name].outlier_ratio == float("inf")) != split
    assert all(type(m) is not Int8Linear for m in fp32.modules())  # the fp32 model is untouched


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.ao's announced move to torchao
@pytest.mark.parametrize("reduce_range", [True, False])
def test_int8_linear_is_fp32_on_outlier_rows_and_torch_int8_on_the_others(reduce_range):
    """The fast path's two parts equal their plain computations: the outlier rows F.linear with the dequantized
    weight, the others torch's dynamic int8 of the input without the outlier rows (which then sets its scale)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(16, 8)).eval()
    q = quantize_dynamic(
        lin, {"0": per_channel_dynamic_qconfig}, dtype=torch.qint8, mapping={torch.nn.Linear: Int8Linear}
    )[0]
    q.reduce_range = reduce_range
    x = torch.randn(2, 5, 16)
    x[0, 0] *= 40  # a [CLS]-like token
    flat = x.reshape(10, 16)
    assert outlier_rows(flat, q.outlier_ratio).tolist() == [0]
    before = x.clone()
    y = q(x).reshape(10, 8)
    assert torch.equal(x, before)  # the outlier rows, zeroed in place for the int8 product, are put back
    packed = q._packed_params._packed_params
    plain = torch.ops.quantized.linear_dynamic(
        flat.index_fill(0, torch.tensor([0]), 0.0), packed, reduce_range=reduce_range
    )
    assert torch.equal(y[1:], plain[1:])
    torch.testing.assert_close(y[0], F.linear(flat[0], q.weight().dequantize(), q.bias()))
    assert (y - lin(flat)).abs().max() < 0.05 * lin(flat).abs().max()
    q.outlier_ratio = float("inf")  # no split: torch's dynamic Linear exactly
    assert torch.equal(q(x).reshape(10, 8), torch.ops.quantized.linear_dynamic(flat, packed, reduce_range=reduce_range))
    assert outlier_rows(flat[:0], 4.0).numel() == 0


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


def packed_by(layer: Int8Linear, engines=("onednn", "fbgemm")) -> str:
    """The engine whose packing of this layer's weight gives its int8 product bit for bit (their roundings differ
    in the last bits), on a fixed input."""
    import bertkit.runtime.int8 as int8_module

    x = torch.randn(64, layer.in_features, generator=torch.Generator().manual_seed(0))
    got = torch.ops.quantized.linear_dynamic(x, layer._packed_params._packed_params, reduce_range=False)
    found = []
    for engine in engines:
        with int8_module.packing_engine(engine):
            packed = torch.ops.quantized.linear_prepack(*layer._weight_bias())
        found += [engine] if torch.equal(got, torch.ops.quantized.linear_dynamic(x, packed, reduce_range=False)) else []
    assert len(found) == 1, found
    return found[0]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_int8_packs_for_onednn_with_vnni_also_under_bf16_and_restores_the_engine(tiny_qa_dir, monkeypatch):
    """With 8-bit activations the weights are packed for oneDNN (when this torch has it), fbgemm otherwise, and stay
    so when bf16 stores the other Linear layers (no repacking copy); the caller's engine is left as it was."""
    import bertkit.runtime.int8 as int8_module

    engines = torch.backends.quantized.supported_engines
    if "onednn" not in engines or "fbgemm" not in engines:
        pytest.skip(f"this torch's quantized engines are {engines}: no oneDNN and fbgemm to compare")
    assert int8_module.engine_for(True) == "onednn" and int8_module.engine_for(False) == "fbgemm"
    before = torch.backends.quantized.engine
    for vnni, engine in ((True, "onednn"), (False, "fbgemm")):
        monkeypatch.setattr(int8_module, "full_range_activations", lambda vnni=vnni: vnni)
        for precision in ("fp32", "bf16"):
            qa = QuestionAnswerer.from_pretrained(tiny_qa_dir, device="cpu", quantize="int8", precision=precision)
            layers = [m for m in qa.model.modules() if isinstance(m, Int8Linear)]
            assert layers and all(packed_by(m) == engine for m in layers), (vnni, precision)
            assert torch.backends.quantized.engine == before
    with pytest.raises(RuntimeError), int8_module.packing_engine("onednn"):
        raise RuntimeError
    assert torch.backends.quantized.engine == before
    assert int8_module.engine_for(True, ["qnnpack", "none"]) == "qnnpack"  # ARM
    with pytest.raises(ValueError, match="quantized engine"):
        int8_module.engine_for(True, ["none"])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_outlier_rows_are_fp32_under_autocast_and_an_inference_tensor_is_not_changed():
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(16, 8)).eval()
    q = quantize_dynamic(
        lin, {"0": per_channel_dynamic_qconfig}, dtype=torch.qint8, mapping={torch.nn.Linear: Int8Linear}
    )[0]
    x = torch.randn(10, 16)
    x[3] *= 40
    exact = F.linear(x[3], q.weight().dequantize(), q.bias())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = q(x)
    assert y.dtype == torch.float32 and torch.equal(y[3], exact)  # not a bf16 product
    with torch.inference_mode():
        frozen = x.clone()
    with torch.no_grad():
        assert torch.equal(q(frozen), q(x)) and torch.equal(frozen, x)  # copied, not zeroed in place


def test_int8_under_bf16_autocast_runs_and_stays_close(tiny_qa_dir, tiny_qa):
    """--quantize int8 with --precision bf16: the int8 product takes float32 (cast from bf16) and the outlier rows'
    fp32 product is stored in the output's dtype; the logits stay near fp32's."""
    both = QuestionAnswerer.from_pretrained(tiny_qa_dir, device="cpu", quantize="int8", precision="bf16")
    for m in both.model.modules():
        if isinstance(m, Int8Linear):
            m.outlier_ratio = 1.0  # half the rows through the fp32 product
    p = tiny_qa.prepare([Query("Who won?", CONTEXT)])
    s32, s8 = tiny_qa.logits(*p.inputs)[0], both.logits(*p.inputs)[0]
    real = p.features.input_mask.astype(bool)
    assert np.abs(s32[real] - s8[real]).max() < 0.1 * np.abs(s32[real]).max()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_linears_stored_in_the_autocast_dtype_give_the_same_bits(tiny_qa_dir, tiny_qa, precision):
    """`precision` bf16/fp16: the answerer keeps its Linear weights in autocast's dtype (cast once, not per call);
    its logits equal the float32 model's under autocast bit for bit, and the model it was given stays float32."""
    from bertkit.runtime.precision import autocast, cast_linears

    fast = QuestionAnswerer(tiny_qa.model, tiny_qa.tokenizer, device="cpu", precision=precision)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    assert fast.model.qa.weight.dtype == dtype and fast.model.bert.layers[0].mlp.fc1.bias.dtype == dtype
    assert fast.model.bert.layers[0].attn_norm.weight.dtype == torch.float32  # LayerNorm, embeddings: as they were
    assert all(p.dtype == torch.float32 for p in tiny_qa.model.parameters())  # the given model: untouched
    p = tiny_qa.prepare([Query("Who won?", CONTEXT), Query("Who lost?", CONTEXT)])
    ids, mask, types = (torch.as_tensor(a).long() for a in p.inputs)
    with torch.no_grad(), autocast(precision, torch.device("cpu")):
        plain = tiny_qa.model(ids, types, mask)  # float32 weights, cast by autocast at this call
        once = fast.model(ids, types, mask)
    for a, b in zip(plain, once, strict=True):
        assert torch.equal(a, b)
    assert cast_linears(tiny_qa.model, "fp32") is tiny_qa.model
    with pytest.raises(ValueError, match="precision"):
        cast_linears(tiny_qa.model, "int4")
