"""`bertkit ask`: answer a question about a text, or a jsonl file of them, with a fine-tuned SQuAD model; and the
flags that load a model for inference, shared by `ask` and `serve` (`InferenceFlags`, `load_qa`).

The answering is `serve.qa.QuestionAnswerer`'s; this module reads files and flags and prints.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from bertkit.data.vocab import TokenizerFlags
from bertkit.runtime.config import Composed, Section, positive
from bertkit.runtime.precision import QUANTIZE
from bertkit.serve.qa import Answer, Query, QuestionAnswerer


@dataclass(frozen=True)
class InferenceFlags(Section):
    """How to load and run a fine-tuned model for inference: shared by `bertkit ask` and `bertkit serve`."""

    model: str | None = field(
        default=None, metadata={"help": "fine-tuned SQuAD checkpoint: bertkit, Hugging Face, Google TF or OneFlow"}
    )
    max_seq_length: int | None = field(
        default=None,
        metadata={"help": "tokens per window, [CLS] question [SEP] context [SEP], or per classified text, [CLS] text "
                          "[SEP] (pair [SEP]) (default: the model's fine-tuning length from its run_config.json, else "
                          "384 for QA, 128 for a classifier, at most its max_position_embeddings)"},
    )  # fmt: skip
    doc_stride: int | None = field(
        default=None,
        metadata={"help": "tokens between the starts of a long context's windows (default: the model's "
                          "fine-tuning stride, else 128 at most half the window)"},
    )  # fmt: skip
    max_query_length: int | None = field(
        default=None, metadata={"help": "questions are cut to this many tokens (default: the model's, else 64)"}
    )
    version_2_with_negative: bool = field(
        default=False, metadata={"help": 'SQuAD 2.0 model: answer "" (no answer) by Google\'s null-score rule'}
    )
    null_score_diff_threshold: float = field(
        default=0.0, metadata={"help": 'v2.0: answer "" when null score - best non-null score exceeds this'}
    )
    n_best_size: int = field(
        default=20,
        metadata={"help": "Google's candidates: the n best starts x n best ends per window, as squad-predict; "
                          "n_best_size >= max_seq_length tries every span, as Hugging Face's pipeline"},
    )  # fmt: skip
    batch_size: int = field(default=32, metadata={"help": "windows run through the model at once"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    precision: str = field(
        default="fp32",
        metadata={
            "help": "fp32, or bf16 / fp16 autocast (bf16 on a CPU with AMX: the fastest CPU path measured, "
            "answers near fp32's)",
            "choices": ("fp32", "bf16", "fp16"),
        },
    )
    quantize: str = field(
        default="none",
        metadata={"help": "int8: the Linear layers in dynamic int8 on the CPU (faster, not exact; on a CPU with "
                          "AMX --precision bf16 is faster still); none: exact",
                  "choices": QUANTIZE},
    )  # fmt: skip
    num_threads: int = field(
        default=0, metadata={"help": "CPU threads for the model (0: torch's default, the machine's cores)"}
    )

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("--model is required: the fine-tuned checkpoint directory")
        positive(self, "max_seq_length", "doc_stride", "max_query_length", "batch_size", "n_best_size")
        positive(self, "num_threads", zero=True)

    def model_path(self) -> str:
        """--model, checked before loading: a missing path, or a training run's output folder (whose model is its
        last_snapshot), is one line saying so. Sets torch's CPU threads to --num_threads when given."""
        path = Path(self.model)
        if not path.exists() and not any(path.parent.glob(path.name + ".*")):  # a TF checkpoint is a prefix
            raise ValueError(f"--model {self.model}: no such file or directory")
        configs = (path / "bert_config.json", path / "config.json")
        if (path / "last_snapshot").is_dir() and not any(c.exists() for c in configs):
            raise ValueError(f"--model {self.model} is a training run's output folder: its fine-tuned model is "
                             f"--model {path / 'last_snapshot'}")  # fmt: skip
        if self.num_threads:
            import torch

            torch.set_num_threads(self.num_threads)
        return self.model

    def inference_device(self) -> str:
        """--device, with auto meaning the CPU under --quantize int8 (torch's dynamic int8 is CPU only)."""
        return "cpu" if self.quantize != "none" and self.device == "auto" else self.device


# the tokenizer flags as ask and serve describe them (the checkpoint decides; there is no record data)
INFERENCE_HELP = {
    "do_lower_case": "lowercase input (default: the checkpoint's tokenizer_config.json, else from the vocab)"
}


def load_qa(cfg) -> QuestionAnswerer:
    """The QuestionAnswerer of a config with sections `inference` and `tokenizer` (ask's, serve's); the vocabulary
    decision printed on stderr (ask's stdout holds the answers). ValueError for windows the model cannot take."""
    m, t = cfg.inference, cfg.tokenizer
    qa = QuestionAnswerer.from_pretrained(
        m.model_path(), vocab_file=t.vocab_file, do_lower_case=t.do_lower_case, device=m.inference_device(),
        batch_size=m.batch_size, max_query_length=m.max_query_length, n_best_size=m.n_best_size,
        max_seq_length=m.max_seq_length, doc_stride=m.doc_stride, version_2_with_negative=m.version_2_with_negative,
        null_score_diff_threshold=m.null_score_diff_threshold, precision=m.precision, quantize=m.quantize,
        check_casing=t.check_casing,
    )  # fmt: skip
    print(qa.tokenization, file=sys.stderr)
    try:
        qa.check_windows(qa.doc_stride, qa.max_seq_length)
    except ValueError as e:
        raise ValueError(f"--{e}") from None
    return qa


@dataclass(frozen=True)
class AskFlags(Section):
    """What to answer and where the answers go."""

    question: str | None = field(default=None, metadata={"help": "the question to answer about --context"})
    context: str | None = field(
        default=None, metadata={"help": "a text file holding the context (a path, not the text itself), or - for stdin"}
    )
    jsonl: str | None = field(
        default=None, metadata={"help": 'answer a file of {"id", "question", "context"} lines instead'}
    )
    output: str | None = field(default=None, metadata={"help": "--jsonl answers go here (default: standard output)"})
    top_k: int = field(default=1, metadata={"help": "answers per question, best first (at most --n_best_size)"})
    max_answer_length: int = field(default=30, metadata={"help": "longest answer considered, in tokens"})

    def __post_init__(self) -> None:
        if self.jsonl is None and (self.question is None or self.context is None):
            raise ValueError("give --question and --context FILE (or - for stdin), or --jsonl FILE")
        if self.jsonl is not None and (self.question is not None or self.context is not None):
            raise ValueError("--jsonl answers a file of questions; do not give --question or --context with it")
        positive(self, "max_answer_length")


@dataclass(frozen=True)
class AskConfig(Composed):
    """Answer a question about a text with a fine-tuned SQuAD model, or a jsonl file of them.

    One question: `bertkit ask --model DIR --question "Who won?" --context article.txt` prints each answer (at most
    --top_k) with its score (P(start) x P(end), as Hugging Face's pipeline) and its character span [start, end) in
    the context. Many: `--jsonl questions.jsonl` reads {"id", "question", "context"} lines and writes one
    {"id", "answers": [{"text", "score", "start", "end"}]} line each to --output (default: standard output).
    """

    inference: InferenceFlags
    tokenizer: TokenizerFlags
    ask: AskFlags

    HELP = INFERENCE_HELP

    @classmethod
    def resolve(cls, values: dict) -> dict:
        if not 1 <= values["top_k"] <= values["n_best_size"]:
            raise ValueError(f"--top_k must be in [1, --n_best_size {values['n_best_size']}], got {values['top_k']}")
        return values


JSONL_CHUNK = 64  # questions answered together when reading --jsonl (their windows batched)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The {"id", "question", "context"} lines of a file; ValueError naming the file, line and field."""
    rows = []
    try:
        lines = Path(path).read_text(encoding="utf-8").split("\n")  # not splitlines: JSON strings may hold U+2028
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--jsonl {path}: cannot read it ({e})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{n}: expected an object with id, question, context")
        for key in ("question", "context"):
            if not isinstance(row.get(key), str):
                raise ValueError(f"{path}:{n}: '{key}' should be a string, got {row.get(key)!r:.40}")
        rows.append({"id": row.get("id", n), "question": row["question"], "context": row["context"]})
    return rows


def run_ask(cfg: AskConfig) -> list[list[Answer]]:
    cfg.inference.model_path()  # a wrong --model is said before the questions are read (stdin included)
    if cfg.ask.jsonl is not None:
        rows = read_jsonl(cfg.ask.jsonl)
    else:
        if cfg.ask.context == "-":
            context = sys.stdin.read()
        else:
            try:
                context = Path(cfg.ask.context).read_text(encoding="utf-8")
            except OSError as e:
                raise ValueError(f"--context {cfg.ask.context}: cannot read it ({e.strerror})") from None
        rows = [{"id": None, "question": cfg.ask.question, "context": context}]
    qa = load_qa(cfg)
    queries = [Query(r["question"], r["context"], cfg.ask.top_k, cfg.ask.max_answer_length) for r in rows]
    if cfg.ask.jsonl is None:
        answers = qa.answer(queries)
        for rank, a in enumerate(answers[0], 1):
            text = a.text if a.text else "(no answer)"
            print(f"{rank}. {text}\tscore {a.score:.4f}\tcharacters [{a.start}, {a.end})")
        if not answers[0]:
            print("(no answer: the context has no words or no valid span)")
        return answers
    out = open(cfg.ask.output, "w", encoding="utf-8") if cfg.ask.output else sys.stdout
    answers = []
    try:
        with tqdm(total=len(queries), desc="ask", unit="question", file=sys.stderr,
                  disable=not sys.stderr.isatty()) as bar:  # fmt: skip
            for i in range(0, len(queries), JSONL_CHUNK):
                chunk = qa.answer(queries[i : i + JSONL_CHUNK])
                for row, found in zip(rows[i : i + JSONL_CHUNK], chunk, strict=True):
                    out.write(json.dumps({"id": row["id"], "answers": [a.to_dict() for a in found]}) + "\n")
                answers += chunk
                bar.update(len(chunk))
    finally:
        if out is not sys.stdout:
            out.close()
    return answers
