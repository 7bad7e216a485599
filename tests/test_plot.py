"""`bertkit plot`: curves from metrics.jsonl, clear errors for a wrong directory or a broken line."""

from __future__ import annotations

import json

import pytest

from bertkit.cli import main
from bertkit.plot import panel_keys

pytest.importorskip("matplotlib", reason="bertkit plot needs matplotlib (the [plot] extra)")


def write_log(d, lines):
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_plot_writes_a_png(tmp_path, capsys):
    recs = [{"step": i, "total_loss": 10 - i / 10, "mlm_loss": 9 - i / 10, "nsp_loss": 0.7, "lr": i * 1e-4,
             "sentences_per_sec": 100.0 + i} for i in range(1, 30)]  # fmt: skip
    recs.append({"step": 29, "eval_mlm_accuracy": 0.1, "eval_nsp_accuracy": 0.6})
    write_log(tmp_path, [json.dumps(r) for r in recs])
    assert main(["plot", str(tmp_path)]) == 0
    png = tmp_path / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert main(["plot", str(tmp_path), "--output", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").is_file()


def test_plot_errors_name_the_problem(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nowhere")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    write_log(tmp_path, ['{"step": 1, "total_loss": 1.0}', "{oops"])
    assert main(["plot", str(tmp_path)]) == 2
    assert "metrics.jsonl:2: not a JSON line" in capsys.readouterr().err


def test_panels_draw_training_losses_and_evaluation_scores():
    """A fine-tuning log ends with its closing evaluation (classify's eval_loss is not a training loss), and SQuAD
    v2.0's evaluation holds counts and thresholds that are not scores."""
    records = [{"step": 1, "total_loss": 2.0, "lr": 1e-4}, {"step": 1, "eval_accuracy": 0.5, "eval_loss": 0.7},
               {"step": 2, "eval_exact": 50.0, "eval_f1": 55.0, "eval_total": 11873, "eval_HasAns_total": 5928,
                "eval_best_f1_thresh": -1.5}]  # fmt: skip
    assert panel_keys(records) == (["total_loss"], ["eval_accuracy", "eval_exact", "eval_f1", "eval_loss"])
