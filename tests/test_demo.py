"""`bertkit demo --quick`: the whole pipeline on the embedded data, in a temporary directory."""

from __future__ import annotations

import json

import pytest

from bertkit.cli import main

pytest.importorskip("matplotlib", reason="the demo draws its curves with matplotlib (the [plot] extra)")


def test_quick_demo_writes_everything_and_learns(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--pretrain_iters=12", f"--output_dir={out}"]) == 0
    printed = capsys.readouterr().out
    for f in ("summary.json", "pretrain_curves.png", "pretrain/last_snapshot/model.safetensors",
              "pretrain/log/metrics.jsonl", "squad/predictions.json", "squad/nbest_predictions.json",
              "squad_untrained/predictions.json"):  # fmt: skip
        assert (out / f).is_file(), f
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pretrain"]["mlm_loss_end"] < summary["pretrain"]["mlm_loss_start"] - 1.0
    for key in ("pretrained_and_fine_tuned", "untrained"):
        assert 0 <= summary["squad"][key]["f1"] <= 100
    assert summary["data"]["squad_heldout_questions"] == 810 and summary["data"]["instances"] > 100
    # The seed's log lines, the commands it ran, the table and the advice on what to run next.
    assert "iter 0, total_loss:" in printed or "iter 1, total_loss:" in printed
    assert "$ bertkit create-pretraining-data " in printed and "$ bertkit pretrain " in printed
    assert "held-out EM / F1, untrained model" in printed and "Next, on real data" in printed
    assert printed.count("of 810 answered exactly") == 2
