"""From logits to answers and files: all_results.npy, Google's write_predictions, and the model's logits per window.

References: google-research/bert `run_squad.py` @ eedf5716 (`write_predictions`, `get_final_text`,
`_get_best_indexes`, `_compute_softmax`) and the seed's OneFlow-Benchmark `npy2json.py` (`all_results.npy` + SQuAD
json -> `predictions.json`), whose all_results.npy format is read here. `squad.py` runs the commands that use this.

`all_results.npy`, the model's logits per window, is written as a numpy structured array that loads without
pickle (`np.load(path)`), one element per window, in window order:
    unique_id     int64           the window's id (Google's numbering, from 1000000000)
    start_logits  float32 (T,)    answer-start logit per position (T = max_seq_length); -inf at padding
    end_logits    float32 (T,)    answer-end logit per position; -inf at padding
The seed's file (an object array of (unique_id (1,), start_logits (T,), end_logits (T,)) rows, which numpy can only
read by unpickling) is read too, with an unpickler that admits numpy arrays and nothing else.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import pickle
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.runtime import dist
from bertkit.runtime.precision import autocast
from bertkit.tasks.squad.data import SquadExample, SquadFeatures

# --- all_results.npy ------------------------------------------------------------------------------------------


@dataclass
class RawResults:
    """The model's logits per window: unique_id (N,) int64, start_logits and end_logits (N, T) float32."""

    unique_id: np.ndarray
    start_logits: np.ndarray
    end_logits: np.ndarray

    def save(self, path: str | Path) -> None:
        """Write all_results.npy in the structured format of the module docstring."""
        n, T = self.start_logits.shape
        out = np.empty(n, np.dtype([("unique_id", "<i8"), ("start_logits", "<f4", (T,)), ("end_logits", "<f4", (T,))]))
        out["unique_id"], out["start_logits"], out["end_logits"] = self.unique_id, self.start_logits, self.end_logits
        np.save(path, out, allow_pickle=False)

    @classmethod
    def load(cls, path: str | Path) -> RawResults:
        """Read bertkit's structured all_results.npy or the seed's object array; a repeated unique_id (the seed
        reads its records in a cycle, so iter_num x batch size can exceed the windows) is kept once, the first."""
        try:
            with open(path, "rb") as f:  # the header says whether the data is pickled objects (the seed's file)
                version = np.lib.format.read_magic(f)
                header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = header(f)
                if dtype.hasobject:
                    return cls._from_seed(_NumpyOnlyUnpickler(f, encoding="latin1").load(), path)
                # The header's shape decides what np.load allocates: check it against the file's size first.
                want, have = math.prod(shape) * dtype.itemsize, os.fstat(f.fileno()).st_size - f.tell()
                if want != have:
                    raise ValueError(f"its header says shape {shape} of {dtype.str}, {want:,} bytes, but it holds "
                                     f"{have:,} bytes: truncated or damaged")  # fmt: skip
            a = np.load(path, allow_pickle=False)
        except (OSError, ValueError, pickle.UnpicklingError, EOFError) as e:
            raise ValueError(f"{path}: cannot read all_results ({e})") from None
        names = a.dtype.names or ()
        if not {"unique_id", "start_logits", "end_logits"} <= set(names):
            raise ValueError(f"{path}: expected fields unique_id, start_logits, end_logits; found {names or a.dtype}")
        return cls(a["unique_id"].astype(np.int64), a["start_logits"], a["end_logits"]).unique()

    @classmethod
    def _from_seed(cls, rows: np.ndarray, path: str | Path) -> RawResults:
        if rows.ndim != 2 or rows.shape[1] != 3:
            raise ValueError(f"{path}: a seed all_results.npy holds (unique_id, start, end) rows, got {rows.shape}")
        uid = np.array([int(np.asarray(r).reshape(-1)[0]) for r in rows[:, 0]], np.int64)
        start = np.stack([np.asarray(r, np.float32).reshape(-1) for r in rows[:, 1]])
        end = np.stack([np.asarray(r, np.float32).reshape(-1) for r in rows[:, 2]])
        return cls(uid, start, end).unique()

    def unique(self) -> RawResults:
        _, first = np.unique(self.unique_id, return_index=True)
        if len(first) == len(self.unique_id):
            return self
        keep = np.sort(first)
        return RawResults(self.unique_id[keep], self.start_logits[keep], self.end_logits[keep])


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays (what np.save writes for an object array of arrays) and refuses anything else, so a
    crafted all_results.npy cannot run code."""

    ALLOWED = {
        (module, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    } | {("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are expected")
        return super().find_class(module, name)


# --- predictions: Google's write_predictions -------------------------------------------------------------------


def get_final_text(pred_text: str, orig_text: str, tokenizer: WordPieceTokenizer, verbose: bool = False) -> str:
    """Google's `get_final_text`: the part of the original words `orig_text` that the normalised prediction
    `pred_text` (lowercased, accents stripped, punctuation split off) covers. "steve smith" in "Steve Smith's" gives
    "Steve Smith". The characters are aligned one to one after basic tokenization with spaces removed; where that
    fails, the whole of `orig_text` is returned, as Google does."""
    start, end = final_text_span(pred_text, orig_text, tokenizer, verbose)
    return orig_text[start:end]


def final_text_span(
    pred_text: str, orig_text: str, tokenizer: WordPieceTokenizer, verbose: bool = False
) -> tuple[int, int]:
    """Where get_final_text's answer lies in `orig_text`: character offsets (start, end), end exclusive."""
    tok_text = " ".join(tokenizer.basic_tokenize(orig_text))
    start = tok_text.find(pred_text)
    if start == -1:
        if verbose:
            print(f"Unable to find text: '{pred_text}' in '{orig_text}'")
        return 0, len(orig_text)
    end = start + len(pred_text) - 1
    # Index of each non-space character (Google's ns_to_s_map); both lists are sorted.
    orig_kept = [i for i, c in enumerate(orig_text) if c != " "]
    tok_kept = [i for i, c in enumerate(tok_text) if c != " "]
    if len(orig_kept) != len(tok_kept):
        if verbose:
            print(f"Length not equal after stripping spaces: '{orig_text}' vs '{tok_text}'")
        return 0, len(orig_text)

    def to_orig(position: int) -> int | None:
        ns = bisect.bisect_left(tok_kept, position)  # the position's rank among non-spaces, if it is not a space
        return orig_kept[ns] if ns < len(tok_kept) and tok_kept[ns] == position else None

    orig_start, orig_end = to_orig(start), to_orig(end)
    if orig_start is None or orig_end is None:
        if verbose:
            print(f"Couldn't map {'start' if orig_start is None else 'end'} position")
        return 0, len(orig_text)
    return orig_start, orig_end + 1


def compute_softmax(scores: list[float]) -> list[float]:
    """Google's `_compute_softmax`, in Python floats, so probabilities agree to the last digit."""
    if not scores:
        return []
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [x / total for x in exps]


def best_indexes(logits: np.ndarray, n_best_size: int) -> np.ndarray:
    """Google's `_get_best_indexes`: the positions of the n largest logits, largest first, ties in position order."""
    return np.argsort(-logits, kind="stable")[:n_best_size]


@dataclass
class SquadPredictions:
    """What Google's write_predictions writes: answer per question, n-best list per question, and (v2.0) the null
    score minus the best non-null score per question (`null_odds.json`)."""

    predictions: dict[str, str]
    nbest: dict[str, list[dict]]
    null_odds: dict[str, float] | None = None

    def write(self, output_dir: str | Path) -> list[Path]:
        """predictions.json, nbest_predictions.json and (v2.0) null_odds.json, laid out as Google's (indent 4)."""
        d = Path(output_dir)
        d.mkdir(parents=True, exist_ok=True)
        files = {"predictions.json": self.predictions, "nbest_predictions.json": self.nbest}
        if self.null_odds is not None:
            files["null_odds.json"] = self.null_odds
        for name, obj in files.items():
            (d / name).write_text(json.dumps(obj, indent=4) + "\n", encoding="utf-8")
        return [d / name for name in files]


PREDICTION_FILES = ("predictions.json", "nbest_predictions.json", "null_odds.json")


def predict_answers(
    examples: list[SquadExample],
    features: SquadFeatures,
    results: RawResults,
    tokenizer: WordPieceTokenizer,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    version_2_with_negative: bool = False,
    null_score_diff_threshold: float = 0.0,
    verbose: bool = False,
) -> SquadPredictions:
    """Google's `write_predictions` without the writing: the best answer span per question over all its windows
    (`answer_example`), its n-best list with probabilities, and for v2.0 its null odds."""
    T = features.input_ids.shape[1]
    if results.start_logits.shape[1] != T:
        raise ValueError(
            f"the logits have {results.start_logits.shape[1]} positions per window, the windows {T}: were they made "
            "with another --max_seq_length?"
        )
    row_of: dict[int, int] = {}
    for i, uid in enumerate(results.unique_id.tolist()):
        row_of.setdefault(uid, i)
    rows = np.array([row_of.get(uid, -1) for uid in features.unique_id.tolist()], np.int64)
    if (rows < 0).any():
        raise ValueError(
            f"no logits for {(rows < 0).sum()} of {len(features)} windows (unique_id {features.unique_id[rows < 0][0]}"
            ", ...): were they predicted from this file with the same --max_seq_length, --doc_stride and "
            "--max_query_length?"
        )
    bounds = np.searchsorted(features.example_index, np.arange(len(examples) + 1))
    out = SquadPredictions({}, {}, {} if version_2_with_negative else None)
    for example_index, example in enumerate(examples):
        window_ids = range(bounds[example_index], bounds[example_index + 1])
        nbest, prediction, null_odds = answer_example(
            example, features, results, rows, window_ids, tokenizer, n_best_size, max_answer_length,
            version_2_with_negative, null_score_diff_threshold, verbose,
        )  # fmt: skip
        probs = compute_softmax([c.start_logit + c.end_logit for c in nbest])
        out.nbest[example.qas_id] = [
            {"text": c.text, "probability": p, "start_logit": c.start_logit, "end_logit": c.end_logit}
            for c, p in zip(nbest, probs, strict=True)
        ]
        out.predictions[example.qas_id] = prediction
        if version_2_with_negative:
            out.null_odds[example.qas_id] = null_odds
    return out


class Candidate(NamedTuple):
    """An n-best answer: its text, logits, and where it lies: window (row of the features; -1 for Google's
    "empty" placeholder) and start/end positions in it (0, 0 for the null answer)."""

    text: str
    start_logit: float
    end_logit: float
    window: int = -1
    start: int = 0
    end: int = 0


def answer_example(
    example: SquadExample,
    features: SquadFeatures,
    results: RawResults,
    rows: np.ndarray,
    window_ids: range,
    tokenizer: WordPieceTokenizer,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    version_2_with_negative: bool = False,
    null_score_diff_threshold: float = 0.0,
    verbose: bool = False,
    keep: int | None = None,
) -> tuple[list[Candidate], str, float | None]:
    """Google's write_predictions for one question: (n-best candidates, best first; the predicted text; v2.0 null
    odds, else None). `window_ids` are the question's rows of `features`, `rows[w]` the row of `results` holding
    window w's logits. `keep`: list only the first `keep` candidates (the answer is the same for keep >= 2: the
    null answer is one candidate at most; the QA API needs top_k + 1, not Google's 20 texts).

    Per window, the n_best_size best start and end positions are paired; a pair counts when both lie in the
    context, the start is in its max-context window, and 1 <= length <= max_answer_length. The pairs of all
    windows are ranked by start + end logit; their texts, mapped back to the original words (`get_final_text`), make
    the n-best list, repeats dropped. For v2.0 the null answer (the smallest [CLS] score over the windows) competes,
    and "" is predicted when it beats the best non-null answer by more than null_score_diff_threshold.
    """
    pairs, null = _candidates(features, results, rows, window_ids, n_best_size, max_answer_length)
    if version_2_with_negative:
        pairs = tuple(np.append(column, x) for column, x in zip(pairs, (null[1], 0, 0, null[2], null[3]), strict=True))
    w, s, e, start_logit, end_logit = pairs
    # Google sorts a Python list by start + end logit (stable, largest first); a stable argsort of the negated
    # float64 sums gives the same order, ties included. Tuples are made only for the candidates _nbest reads.
    order = np.argsort(-(start_logit + end_logit), kind="stable")
    prelim = ((int(w[i]), int(s[i]), int(e[i]), float(start_logit[i]), float(end_logit[i])) for i in order)
    nbest = _nbest(prelim, example, features, tokenizer, min(n_best_size, keep or n_best_size), verbose)
    if version_2_with_negative and not any(c.text == "" for c in nbest):
        nbest.append(Candidate("", null[2], null[3], null[1]))
    if not nbest:  # no valid span at all: Google's placeholder
        nbest.append(Candidate("empty", 0.0, 0.0))
    if not version_2_with_negative:
        return nbest, nbest[0].text, None
    best_non_null = next((c for c in nbest if c.text), None)
    if best_non_null is None:  # every candidate is the null answer: Google fails here; the null answer wins
        return nbest, "", null[0]
    score_diff = null[0] - best_non_null.start_logit - best_non_null.end_logit  # Google's order of subtraction
    return nbest, "" if score_diff > null_score_diff_threshold else best_non_null.text, score_diff


def _candidates(
    features: SquadFeatures, results: RawResults, rows: np.ndarray, window_ids: range, n_best: int, max_len: int
) -> tuple[tuple[np.ndarray, ...], tuple]:
    """Valid pairs of an example's windows as arrays (window, start, end (P,) int; start logit, end logit (P,)
    float64), in Google's order (window, then start rank, then end rank), and the null answer: (score, window, start
    logit, end logit) of the window with the smallest [CLS] score (the first on ties)."""
    parts = []
    null = (1000000.0, 0, 0.0, 0.0)  # Google's "large and positive" start
    for w in window_ids:
        # Float64 of the float32 logits, as Google's RawResult holds them (Python floats): sums agree exactly.
        start_logits, end_logits = results.start_logits[rows[w]], results.end_logits[rows[w]]
        null_score = float(start_logits[0]) + float(end_logits[0])
        if null_score < null[0]:
            null = (null_score, w, float(start_logits[0]), float(end_logits[0]))
        starts = best_indexes(start_logits, n_best)[:, None]  # (n, 1)
        ends = best_indexes(end_logits, n_best)[None, :]  # (1, n)
        to_word, max_context = features.token_to_orig_map[w], features.token_is_max_context[w]
        ok = (to_word[starts] >= 0) & (to_word[ends] >= 0) & (max_context[starts] == 1)
        ok &= (ends >= starts) & (ends - starts < max_len)
        si, ei = np.nonzero(ok)  # row-major: start rank, then end rank
        s, e = starts[si, 0], ends[0, ei]
        parts.append((np.full(len(s), w), s, e, start_logits[s].astype(np.float64), end_logits[e].astype(np.float64)))
    if not parts:
        return (np.zeros(0, np.int64),) * 3 + (np.zeros(0),) * 2, null
    return tuple(np.concatenate(column) for column in zip(*parts, strict=True)), null


def _nbest(
    prelim: Iterable[tuple],
    example: SquadExample,
    features: SquadFeatures,
    tokenizer: WordPieceTokenizer,
    n_best_size: int,
    verbose: bool,
) -> list[Candidate]:
    """The best candidates with distinct texts, at most n_best_size."""
    nbest, seen = [], set()
    for w, s, e, start_logit, end_logit in prelim:
        if len(nbest) >= n_best_size:
            break
        if s > 0:  # a span of the context, not the null answer
            text = span_text(example, features, w, s, e, tokenizer, verbose)[0]
            if text in seen:
                continue
        else:
            text = ""
        seen.add(text)
        nbest.append(Candidate(text, start_logit, end_logit, w, s, e))
    return nbest


def span_text(
    example: SquadExample, features: SquadFeatures, w: int, s: int, e: int, tokenizer: WordPieceTokenizer,
    verbose: bool = False,
) -> tuple[str, int, int]:  # fmt: skip
    """(text, first word, offset) of positions s..e of window w: Google's answer text, the index in
    example.doc_tokens of the first word it lies in, and where the text starts in the words from there joined by
    single spaces."""
    pieces = tokenizer.convert_ids_to_tokens(features.input_ids[w, s : e + 1].tolist())
    tok_text = " ".join(pieces).replace(" ##", "").replace("##", "")
    tok_text = " ".join(tok_text.strip().split())
    words = features.token_to_orig_map[w]
    orig_text = " ".join(example.doc_tokens[words[s] : words[e] + 1])
    start, end = final_text_span(tok_text, orig_text, tokenizer, verbose)
    return orig_text[start:end], int(words[s]), start


# --- the model's side: logits for every window ----------------------------------------------------------------


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    input_ids: np.ndarray,
    input_mask: np.ndarray,
    segment_ids: np.ndarray,
    batch_size: int,
    env: dist.DistEnv,
    precision: str = "fp32",
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Start and end logits (N, T) float32 of N windows (N, T), -inf at padding, on every rank.

    Windows are sorted by length, longest first, and batched with those of similar length; each batch runs cut to
    its longest window, so no compute goes to padding columns (the logits of real tokens do not depend on them:
    tested against the padded run). Rank r runs batches r, r + W, ...; the results are summed across ranks.
    A SIGTERM/SIGINT stops every rank at the next batch (dist.Stopped, exit 128 + signal, no predictions): each
    rank takes the same number of turns (a last turn may have no batch) and they agree on a stop before each one.
    """
    n, T = input_ids.shape
    lengths = input_mask.astype(bool).sum(1)
    order = np.argsort(-lengths, kind="stable")
    logits = np.zeros((2, n, T), np.float32)  # (start/end, N, T); zeros so that a sum over ranks gathers rows
    model.eval()
    turns = dist.SharedBatches(n, batch_size, env, "predicting")  # the same count on every rank; a stop meets all
    # One autocast context for all batches: bf16/fp16 copies of the weights are made once, not per batch (the same
    # values, tested; training's loop does the same for its micro-steps)
    with autocast(precision, env.device):
        for i in tqdm(turns, desc="predict", unit="batch", disable=not (progress and sys.stderr.isatty())):
            if i is None:  # this rank's share ended a turn early
                continue
            idx = order[i : i + batch_size]
            L = int(lengths[idx].max())
            ids, types, mask = (torch.from_numpy(a[idx, :L].astype(np.int64)).to(env.device)
                                for a in (input_ids, segment_ids, input_mask))  # fmt: skip
            start, end = model(ids, types, mask)
            logits[:, idx, :L] = torch.stack([start, end]).float().cpu().numpy()  # 2 x (B, L)
    if env.world_size > 1:
        logits = dist.all_reduce_sum(torch.from_numpy(logits).to(env.device), env).cpu().numpy()
    logits[:, ~input_mask.astype(bool)] = -np.inf
    return logits[0], logits[1]
