"""BertConfig: Google's bert_config.json round trip, the seed's sizing, and errors that name file and key."""

from __future__ import annotations

import json
import warnings

import pytest

from bertkit.model.config import BertConfig

GOOGLE_BASE = {
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "type_vocab_size": 2,
    "vocab_size": 30522,
}


def write(tmp_path, content) -> str:
    p = tmp_path / "bert_config.json"
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(p)


def test_google_file_round_trip(tmp_path):
    cfg = BertConfig.from_json_file(write(tmp_path, GOOGLE_BASE))
    assert cfg == BertConfig()  # the defaults are BERT-base
    assert cfg.layer_norm_eps == 1e-12
    out = tmp_path / "out.json"
    cfg.to_json_file(out)
    again = json.loads(out.read_text())
    assert {k: again[k] for k in GOOGLE_BASE} == GOOGLE_BASE
    assert BertConfig.from_json_file(out) == cfg


def test_shared_tf_checkpoint_config_loads(shared_data):
    cfg = BertConfig.from_json_file(shared_data / "tf-checkpoint-tiny" / "bert_config.json")
    assert cfg.hidden_size == 128 and cfg.num_hidden_layers == 2


def test_unknown_keys_warn_and_are_ignored(tmp_path):
    d = dict(GOOGLE_BASE, model_type="bert", architectures=["BertForMaskedLM"])
    with pytest.warns(UserWarning, match="model_type"):
        cfg = BertConfig.from_json_file(write(tmp_path, d))
    assert cfg == BertConfig()


def test_hidden_size_per_head():
    cfg = BertConfig.from_head_size(num_attention_heads=12, hidden_size_per_head=64)
    assert (cfg.hidden_size, cfg.intermediate_size) == (768, 3072)
    cfg = BertConfig.from_head_size(num_attention_heads=4, hidden_size_per_head=8, intermediate_size=37)
    assert (cfg.hidden_size, cfg.intermediate_size) == (32, 37)
    with pytest.raises(ValueError, match="hidden_size_per_head"):
        BertConfig.from_head_size(num_attention_heads=4, hidden_size_per_head=0)


def test_not_json_names_file_and_line(tmp_path):
    path = write(tmp_path, '{\n  "vocab_size": 30522,\n  oops\n}')
    with pytest.raises(ValueError, match=r"bert_config\.json: not valid JSON \(line 3"):
        BertConfig.from_json_file(path)


def test_not_an_object(tmp_path):
    with pytest.raises(ValueError, match="expected a JSON object"):
        BertConfig.from_json_file(write(tmp_path, "[1, 2]"))


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        BertConfig.from_json_file(tmp_path / "nope.json")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("hidden_size", "768", "must be int"),
        ("hidden_size", 770, "divisible"),
        ("num_hidden_layers", 0, "must be positive"),
        ("vocab_size", -5, "must be positive"),
        ("intermediate_size", 3072.5, "must be int"),
        ("hidden_dropout_prob", 1.0, r"\[0, 1\)"),
        ("attention_probs_dropout_prob", -0.1, r"\[0, 1\)"),
        ("hidden_act", "swish", "hidden_act"),
        ("type_vocab_size", True, "must be int"),
        ("initializer_range", 0, "must be positive"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path, key, value, message):
    path = write(tmp_path, dict(GOOGLE_BASE, **{key: value}))
    with pytest.raises(ValueError, match=message) as e:
        BertConfig.from_json_file(path)
    assert path in str(e.value) and f"'{key}'" in str(e.value)


def test_missing_key_names_it(tmp_path):
    d = dict(GOOGLE_BASE)
    del d["type_vocab_size"]
    with pytest.raises(ValueError, match="missing key 'type_vocab_size'"):
        BertConfig.from_json_file(write(tmp_path, d))


def test_integral_float_values_accepted_for_float_keys(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = BertConfig.from_json_file(write(tmp_path, dict(GOOGLE_BASE, hidden_dropout_prob=0)))
    assert cfg.hidden_dropout_prob == 0


def test_constructor_validates():
    with pytest.raises(ValueError, match="num_attention_heads"):
        BertConfig(hidden_size=32, num_attention_heads=5)


def test_a_config_file_that_is_not_utf8_is_an_error_naming_the_file(tmp_path, capsys):
    from bertkit.cli import main

    bad = tmp_path / "bert_config.json"
    bad.write_bytes(b'{"hidden_size": 768, "name": "\xff"}')
    with pytest.raises(ValueError, match=r"bert_config.json: not a config file: not UTF-8 text \(byte \d+\)"):
        BertConfig.from_json_file(bad)
    (tmp_path / "model.safetensors").write_bytes(b"")  # a bertkit directory, by its file names
    argv = ["convert", "--input", str(tmp_path), "--output", str(tmp_path / "out")]
    assert main(argv) == 2  # convert's user errors exit 2, as every command's
    assert "bert_config.json: not a config file: not UTF-8" in capsys.readouterr().err
