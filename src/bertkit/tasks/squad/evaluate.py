"""`bertkit squad-evaluate`: SQuAD exact match and F1, the same numbers as the official scripts, to the last digit.

References: the official `evaluate-v1.1.py` (SQuAD CodaLab bundle 0xbcd57bee090b421c982906709c8c27e1) and
`evaluate-v2.0.py` (rajpurkar/SQuAD-explorer, MIT). Both are vendored under tests/fixtures/official/ and run as the
oracle in tests/test_evaluate.py. What the versions share and where they differ:

- Answers are compared after `normalize_answer`: lowercase, drop ASCII punctuation, drop the words a/an/the,
  collapse whitespace. Exact match and token F1 take the max over the gold answers; results are 100x means.
- v1.1 compares with every gold answer as given. v2.0 drops gold answers that normalise to nothing, uses [""] for
  a question with none left (the no-answer question), and scores F1 = 1 when prediction and gold are both empty.
- v2.0 reports HasAns_/NoAns_ breakdowns and, given a file of no-answer probabilities (Google writes
  `null_odds.json`), answers "" wherever that probability exceeds `na_prob_thresh` and reports the best threshold.

Sums run in the dataset's order with the official expressions (`100.0 * sum / total`, `2 * p * r / (p + r)`), so the
floats match the official ones bit for bit.
"""

from __future__ import annotations

import json
import re
import string
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bertkit.tasks.squad.data import is_squad_v2, load_squad

PUNCTUATION = frozenset(string.punctuation)  # ASCII only: "—", "“" and "€" survive normalisation, as officially
ARTICLES = re.compile(r"\b(a|an|the)\b")  # \b is Unicode-aware for str patterns, as the official re.UNICODE


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation, drop articles, collapse whitespace (the official order of steps)."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    return " ".join(ARTICLES.sub(" ", text).split())


def exact_score(prediction: str, gold: str) -> int:
    return int(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str, version_2: bool = False) -> float:
    """Token-level F1 of the normalised answers; with `version_2`, two empty answers agree (F1 = 1)."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if version_2 and (not pred_tokens or not gold_tokens):
        return int(pred_tokens == gold_tokens)  # a no-answer is right only against a no-answer
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:
        return 0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return (2 * precision * recall) / (precision + recall)


def _questions(dataset: dict):
    for article in dataset["data"]:
        for paragraph in article["paragraphs"]:
            yield from paragraph["qas"]


def _warn_missing(missing: list[str], total: int) -> None:
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        warnings.warn(f"{len(missing)} of {total} questions have no prediction and score 0: {shown}", stacklevel=3)


def evaluate_v1(dataset: dict, predictions: dict[str, str]) -> dict[str, float]:
    """{"exact_match", "f1"} as `evaluate-v1.1.py`: a question without a prediction scores 0 (and is counted)."""
    exact = f1 = total = 0
    missing = []
    for qa in _questions(dataset):
        total += 1
        if qa["id"] not in predictions:
            missing.append(qa["id"])
            continue
        golds = [a["text"] for a in qa["answers"]]
        if not golds:
            raise ValueError(
                f"question {qa['id']} has no answers: SQuAD v1.1 scoring needs one (use --squad_version 2.0)"
            )
        prediction = predictions[qa["id"]]
        exact += max(exact_score(prediction, g) for g in golds)
        f1 += max(f1_score(prediction, g) for g in golds)
    if total == 0:
        raise ValueError("the dataset has no questions")
    _warn_missing(missing, total)
    return {"exact_match": 100.0 * exact / total, "f1": 100.0 * f1 / total}


def evaluate_v2(
    dataset: dict,
    predictions: dict[str, str],
    na_probs: dict[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict[str, float | int]:
    """The dict `evaluate-v2.0.py` prints: exact, f1, total, HasAns_*, NoAns_*, and best_* when given `na_probs`.

    A question without a prediction scores 0 everywhere and is counted in every total (the official script stops
    with a KeyError instead). Ids are keys, so a repeated question id counts once, as officially.
    """
    has_ans: dict[str, bool] = {}  # question id -> has a gold answer, in dataset order
    exact_raw: dict[str, int] = {}
    f1_raw: dict[str, float] = {}
    for qa in _questions(dataset):
        qid = qa["id"]
        has_ans[qid] = bool(qa["answers"])
        golds = [a["text"] for a in qa["answers"] if normalize_answer(a["text"])] or [""]
        if qid in predictions:
            exact_raw[qid] = max(exact_score(predictions[qid], g) for g in golds)
            f1_raw[qid] = max(f1_score(predictions[qid], g, version_2=True) for g in golds)
    if not has_ans:
        raise ValueError("the dataset has no questions")
    missing = [qid for qid in has_ans if qid not in exact_raw]
    _warn_missing(missing, len(has_ans))

    given_probs = na_probs is not None
    if na_probs is None:  # officially: every prediction gets no-answer probability 0
        na_probs = {qid: 0.0 for qid in predictions}
    lacking = [qid for qid in exact_raw if qid not in na_probs]
    if lacking:
        raise ValueError(f"--na_prob_file lacks {len(lacking)} of the predicted question ids, e.g. {lacking[0]}")

    def threshold(raw: dict) -> dict:
        # Above the threshold the answer is "": right (1.0) exactly for the questions without a gold answer.
        # Questions without a prediction are put back as 0, keeping the dataset's order for the sums.
        scores = {qid: float(not has_ans[qid]) if na_probs[qid] > na_prob_thresh else s for qid, s in raw.items()}
        return {qid: scores.get(qid, 0) for qid in has_ans}

    exact, f1 = threshold(exact_raw), threshold(f1_raw)
    out: dict[str, float | int] = {}
    _add_means(out, "", exact, f1, list(has_ans))
    _add_means(out, "HasAns_", exact, f1, [q for q, h in has_ans.items() if h])
    _add_means(out, "NoAns_", exact, f1, [q for q, h in has_ans.items() if not h])
    if given_probs:
        out["best_exact"], out["best_exact_thresh"] = best_threshold(predictions, exact_raw, na_probs, has_ans)
        out["best_f1"], out["best_f1_thresh"] = best_threshold(predictions, f1_raw, na_probs, has_ans)
    return out


def _add_means(out: dict, prefix: str, exact: dict, f1: dict, qids: list[str]) -> None:
    if qids:  # the official script leaves out an empty HasAns_/NoAns_ group
        total = len(qids)
        out[prefix + "exact"] = 100.0 * sum(exact[q] for q in qids) / total
        out[prefix + "f1"] = 100.0 * sum(f1[q] for q in qids) / total
        out[prefix + "total"] = total


def best_threshold(
    predictions: dict[str, str], raw: dict[str, float], na_probs: dict[str, float], has_ans: dict[str, bool]
) -> tuple[float, float]:
    """(best score, its threshold) over the no-answer thresholds, as the official `find_best_thresh`.

    Start with every question answered "" (each no-answer question right), then lower the bar one question at a
    time in increasing no-answer probability: answering a question gains its raw score, or loses 1 for a no-answer
    question given a non-empty answer. The sort is stable over the na-prob file's order, which decides ties.
    """
    score = sum(1 for qid, h in has_ans.items() if not h and qid in raw)
    best, best_thresh = score, 0.0
    for qid in sorted((q for q in na_probs if q in raw), key=na_probs.__getitem__):
        if has_ans[qid]:
            score += raw[qid]
        elif predictions[qid]:  # the raw text, not its normalisation: officially "the" counts as an answer here
            score -= 1
        if score > best:
            best, best_thresh = score, na_probs[qid]
    return 100.0 * best / len(has_ans), best_thresh


def _load_json(path: str | Path, what: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the {what} file is not valid JSON ({e})") from e
    except UnicodeDecodeError as e:  # all_results.npy given for predictions.json, say
        raise ValueError(f"{path}: the {what} file is not UTF-8 JSON text (byte {e.start}: {e.reason})") from None


def load_predictions(path: str | Path) -> dict[str, str]:
    """{question id: answer text}, as `run_squad.py` writes `predictions.json`; anything else is a ValueError."""
    preds = _load_json(path, "predictions")
    if not isinstance(preds, dict):
        raise ValueError(f"{path}: predictions should be a JSON object of question id -> answer text")
    for qid, text in preds.items():
        if not isinstance(text, str):
            raise ValueError(f"{path}: the prediction for {qid} should be a string, got {type(text).__name__}")
    return preds


def load_na_probs(path: str | Path) -> dict[str, float]:
    """{question id: no-answer probability or score}, as Google's `null_odds.json`."""
    probs = _load_json(path, "no-answer probabilities")
    if not isinstance(probs, dict):
        raise ValueError(f"{path}: no-answer probabilities should be a JSON object of question id -> number")
    for qid, p in probs.items():
        if isinstance(p, bool) or not isinstance(p, int | float):
            raise ValueError(f"{path}: the no-answer probability of {qid} should be a number, got {p!r:.40}")
    return probs


@dataclass(frozen=True)
class EvaluateConfig:
    """Score SQuAD predictions with the official v1.1 / v2.0 metrics and print the official JSON."""

    data_file: str = field(metadata={"help": "SQuAD dataset json (dev-v1.1.json, dev-v2.0.json)", "positional": True})
    pred_file: str = field(metadata={"help": "predictions json: question id -> answer text", "positional": True})
    na_prob_file: str | None = field(
        default=None, metadata={"help": "v2.0: json of question id -> no-answer probability (Google's null_odds.json)"}
    )
    na_prob_thresh: float = field(
        default=1.0, metadata={"help": 'v2.0: answer "" where the no-answer probability exceeds this'}
    )
    out_file: str | None = field(default=None, metadata={"help": "write the metrics json here instead of stdout"})
    squad_version: str = field(
        default="auto",
        metadata={
            "help": "metrics to use; auto: 2.0 if the file's version starts with 2 or has is_impossible",
            "choices": ["auto", "1.1", "2.0"],
        },
    )

    def __post_init__(self) -> None:
        if self.squad_version not in ("auto", "1.1", "2.0"):
            raise ValueError(f"--squad_version must be auto, 1.1 or 2.0, got {self.squad_version!r}")
        if self.na_prob_file and self.squad_version == "1.1":
            raise ValueError("--na_prob_file needs the v2.0 metrics, not --squad_version 1.1")


def run(cfg: EvaluateConfig) -> dict:
    dataset = load_squad(cfg.data_file)
    predictions = load_predictions(cfg.pred_file)
    version_2 = is_squad_v2(dataset) if cfg.squad_version == "auto" else cfg.squad_version == "2.0"
    if not version_2 and cfg.na_prob_file:
        raise ValueError(f"{cfg.data_file} is SQuAD v1.1; --na_prob_file needs v2.0 data (or --squad_version 2.0)")
    if version_2:
        na_probs = load_na_probs(cfg.na_prob_file) if cfg.na_prob_file else None
        result = evaluate_v2(dataset, predictions, na_probs, cfg.na_prob_thresh)
    else:
        result = evaluate_v1(dataset, predictions)
    if cfg.out_file:
        with open(cfg.out_file, "w") as f:
            json.dump(result, f)
    else:  # the official layouts: v1.1 prints one line, v2.0 indents by 2
        print(json.dumps(result, indent=2 if version_2 else None))
    return result
