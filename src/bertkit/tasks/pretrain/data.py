"""`bertkit create-pretraining-data`: raw text -> masked-LM and next-sentence pretraining records.

Reference: google-research/bert @ eedf571 `create_pretraining_data.py`, whose flags and defaults this keeps. With
one worker the records are Google's, record for record, for the same text, vocabulary and seed: every
`random.Random` draw is made in Google's order (tests/test_pretraining_data.py checks four files Google's script
wrote). That order:

1. Documents: the input files' lines in order, split at "\\n" only (as tf.gfile reads) and `str.strip`ped; a blank
   line starts a new document, a line that tokenizes to nothing is dropped, and a file does not end a document.
   Empty documents are removed, then `rng.shuffle(documents)`.
2. `dupe_factor` passes over the documents, each document giving its instances (`_document_instances`):
   `rng.random() < short_seq_prob` and then maybe `rng.randint(2, max_num_tokens)` for the target length; per
   instance `rng.randint` for the sentences in A, `rng.random() < 0.5` for a random next segment (up to ten
   `rng.randint` for another document, one for its first sentence), one `rng.random()` per token trimmed, and
   the masking (`_mask`).
3. `rng.shuffle(instances)`; instance i goes to output file i % (number of output files).

Google works on token strings; this works on ids, which is the same because a vocabulary maps tokens to ids one to
one (duplicates are refused by `load_vocab`): the random replacement word is `vocab_words[rng.randint(0, V - 1)]`
with `vocab_words` in the vocabulary's line order, [CLS]/[SEP] are recognised by id, and "##" pieces by a table.

With `num_workers` > 1 the shuffled documents are cut into tasks of `DOCS_PER_TASK` contiguous documents, each
task drawing from its own `random.Random(f"{random_seed}/{task}")` (random next segments still come from the whole
corpus), run in a process pool; the results are joined in task order and shuffled by the main generator. So the
output depends on the seed alone, not on how many workers (2 or 16) made it; only one worker gives Google's.
"""

from __future__ import annotations

import glob
import itertools
import json
import multiprocessing
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from bertkit.data.records import atomic_output, serialize_rows, write_serialized
from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.data.vocab import check_casing, check_data_vocab_target, default_vocab_path, record_data_vocab

DOCS_PER_TASK = 8  # documents per worker task; part of what a seed means when num_workers > 1
LINES_PER_BATCH = 4096  # lines tokenized per Rust call
FORMATS = ("tfrecord", "ofrecord", "shards")


@dataclass
class CreatePretrainingDataConfig:
    """Create masked-LM / next-sentence pretraining records from raw text: Google's create_pretraining_data.py."""

    input_file: str = field(
        default="",
        metadata={"help": "raw text, one sentence per line, a blank line between documents; comma-separated globs"},
    )
    output_file: str = field(
        default="",
        metadata={"help": "record files, comma-separated, filled round-robin (shards: one new directory)"},
    )
    vocab_file: str | None = field(
        default=None, metadata={"help": "Google vocab.txt; None: the bert-base-uncased vocabulary bertkit ships"}
    )
    do_lower_case: bool = field(default=True, metadata={"help": "lowercase and strip accents: True for uncased"})
    check_casing: bool = field(
        default=True,
        metadata={"help": "stop when --do_lower_case contradicts the vocabulary (capitals in a cased one, none in an "
                          "uncased one); False: use the flag as given"},
    )  # fmt: skip
    do_whole_word_mask: bool = field(
        default=False, metadata={"help": "mask all WordPieces of a word together, never some of them"}
    )
    max_seq_length: int = field(default=128, metadata={"help": "tokens per instance, [CLS] and [SEP]s included"})
    max_predictions_per_seq: int = field(default=20, metadata={"help": "most masked positions per instance"})
    random_seed: int = field(default=12345, metadata={"help": "seed of the random.Random that draws everything"})
    dupe_factor: int = field(default=10, metadata={"help": "passes over the text, each with different masks"})
    masked_lm_prob: float = field(default=0.15, metadata={"help": "fraction of the tokens to mask, in (0, 1]"})
    short_seq_prob: float = field(
        default=0.1, metadata={"help": "probability of a target length shorter than max_seq_length"}
    )
    output_format: str = field(
        default="tfrecord",
        metadata={
            "help": "tfrecord (Google's), ofrecord (the seed's OneFlow format) or shards (bertkit's .npy dir)",
            "choices": list(FORMATS),
        },
    )
    num_workers: int = field(
        default=1, metadata={"help": "processes making instances; 1 gives exactly Google's records"}
    )

    def __post_init__(self) -> None:
        for name in ("input_file", "output_file"):
            if not getattr(self, name).strip(","):
                raise ValueError(f"--{name} is required")
        # [CLS] A [SEP] B [SEP] with A and B at least one token each; Google draws randint(2, max_seq_length - 3).
        if self.max_seq_length < 5:
            raise ValueError(f"--max_seq_length must be at least 5, got {self.max_seq_length}")
        for name in ("max_predictions_per_seq", "dupe_factor", "num_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.masked_lm_prob <= 1:
            raise ValueError(f"--masked_lm_prob must be in (0, 1], got {self.masked_lm_prob}")
        if not 0 <= self.short_seq_prob <= 1:
            raise ValueError(f"--short_seq_prob must be in [0, 1], got {self.short_seq_prob}")
        if self.output_format not in FORMATS:
            raise ValueError(f"--output_format must be one of {', '.join(FORMATS)}, got {self.output_format!r}")
        outputs = self.output_files()
        if self.output_format == "shards" and len(outputs) != 1:
            raise ValueError(f"--output_file: shards go to one directory, got {len(outputs)} paths")
        if len(set(outputs)) != len(outputs):
            raise ValueError(f"--output_file names a file twice: {self.output_file}")

    def output_files(self) -> list[str]:
        return [s.strip() for s in self.output_file.split(",") if s.strip()]


# --- reading the text -------------------------------------------------------------------------------------------


def input_files(patterns: str) -> list[Path]:
    """The files named by comma-separated paths or globs (each glob's matches sorted), in order."""
    files = []
    for pattern in (s.strip() for s in patterns.split(",")):
        if not pattern:
            continue
        if not glob.has_magic(pattern):
            if not Path(pattern).is_file():
                why = "is a directory (name its files, or a glob)" if Path(pattern).is_dir() else "no such file"
                raise ValueError(f"--input_file {pattern}: {why}")
            files.append(Path(pattern))
            continue
        matches = [Path(m) for m in sorted(glob.glob(pattern)) if not Path(m).is_dir()]
        if not matches:
            raise ValueError(f"--input_file {pattern}: no file matches")
        files += matches
    return files


def read_documents(files: list[Path], tokenizer: WordPieceTokenizer) -> list[list[list[int]]]:
    """Documents as lists of sentences of token ids, read as Google does (step 1 of the module docstring)."""
    documents: list[list[list[int]]] = [[]]
    for path in files:
        try:
            # newline="\n": lines end at "\n" alone and keep any "\r" (tf.gfile's readline); strip() removes it.
            with open(path, encoding="utf-8", newline="\n") as fh:
                while batch := list(itertools.islice(fh, LINES_PER_BATCH)):
                    lines = [line.strip() for line in batch]
                    encoded = iter(tokenizer.encode_batch([line for line in lines if line]))
                    for line in lines:
                        if not line:
                            documents.append([])
                        elif ids := next(encoded):
                            documents[-1].append(ids)
        except UnicodeDecodeError as e:
            raise ValueError(f"--input_file {path}: not UTF-8 text ({e.reason})") from None
        except OSError as e:
            raise ValueError(f"--input_file {path}: cannot read ({e.strerror})") from None
    documents = [d for d in documents if d]
    if not documents:
        raise ValueError(f"--input_file {', '.join(map(str, files))}: no text (every line is blank)")
    return documents


def make_tokenizer(cfg: CreatePretrainingDataConfig) -> WordPieceTokenizer:
    """Google's FullTokenizer for these flags: a word longer than 200 characters (not 100) becomes [UNK]."""
    return WordPieceTokenizer(cfg.vocab_file, cfg.do_lower_case, max_input_chars_per_word=200)


# --- instances: Google's algorithm -----------------------------------------------------------------------------


class _Params(NamedTuple):
    """What instance making needs, small enough to send to every worker."""

    max_seq_length: int
    max_predictions_per_seq: int
    masked_lm_prob: float
    short_seq_prob: float
    do_whole_word_mask: bool
    dupe_factor: int
    cls: int
    sep: int
    mask: int
    word_ids: tuple[int, ...]  # id of vocab_words[k], Google's random replacement list (the vocabulary's order)
    continues_word: bytes  # 1 at the ids of "##" pieces


def _params(cfg: CreatePretrainingDataConfig, tokenizer: WordPieceTokenizer) -> _Params:
    vocab = tokenizer.vocab
    continues = bytearray(max(vocab.values()) + 1)
    for token, i in vocab.items():
        continues[i] = token.startswith("##")
    return _Params(
        cfg.max_seq_length,
        cfg.max_predictions_per_seq,
        cfg.masked_lm_prob,
        cfg.short_seq_prob,
        cfg.do_whole_word_mask,
        cfg.dupe_factor,
        *tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]", "[MASK]"]),
        tuple(vocab.values()),
        bytes(continues),
    )


class Instance(NamedTuple):
    """One training instance before padding: Google's TrainingInstance, in ids."""

    tokens: list[int]  # [CLS] A [SEP] B [SEP], masked
    len_a: int
    positions: list[int]  # masked positions, ascending
    labels: list[int]  # the original ids there
    is_random_next: bool


def _truncate(a: list[int], b: list[int], max_num_tokens: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """Google's truncate_seq_pair: the longer segment (B on a tie) loses its first or last token, one draw each."""
    a_lo, a_hi, b_lo, b_hi = 0, len(a), 0, len(b)
    while (a_hi - a_lo) + (b_hi - b_lo) > max_num_tokens:
        front = rng.random() < 0.5
        if a_hi - a_lo > b_hi - b_lo:
            a_lo, a_hi = (a_lo + 1, a_hi) if front else (a_lo, a_hi - 1)
        else:
            b_lo, b_hi = (b_lo + 1, b_hi) if front else (b_lo, b_hi - 1)
    return a[a_lo:a_hi], b[b_lo:b_hi]


_STEPS: dict[int, list[tuple[int, int, int]]] = {}  # list length -> shuffle's (i, i + 1, (i + 1).bit_length())


def _shuffle(x: list, getrandbits) -> None:
    """`random.Random.shuffle(x)` with the same draws and the same result, the draws inlined (about 2x faster).

    CPython's shuffle (3.8-3.13): for i from len(x) - 1 down to 1, j = _randbelow(i + 1), swap x[i] and x[j];
    _randbelow(n) draws getrandbits(n.bit_length()) until the value is below n. `getrandbits` is the generator's
    bound method; tests/test_pretraining_data.py checks the result and the generator's state against shuffle's.
    """
    steps = _STEPS.get(len(x))
    if steps is None:
        steps = [(i, i + 1, (i + 1).bit_length()) for i in range(len(x) - 1, 0, -1)]
        if len(x) <= 4096:  # instance lengths; not the one long shuffle of the instance order
            _STEPS[len(x)] = steps
    for i, n, k in steps:
        j = getrandbits(k)
        while j >= n:
            j = getrandbits(k)
        x[i], x[j] = x[j], x[i]


def _randint(a: int, b: int, getrandbits) -> int:
    """`random.Random.randint(a, b)`, the same draws: a + _randbelow(b - a + 1) (see `_shuffle`)."""
    n = b - a + 1
    k = n.bit_length()
    j = getrandbits(k)
    while j >= n:
        j = getrandbits(k)
    return a + j


def _mask(tokens: list[int], p: _Params, rng: random.Random) -> tuple[list[int], list[int]]:
    """Google's create_masked_lm_predictions, in place on `tokens`; returns (positions, original ids)."""
    random_, getrandbits = rng.random, rng.getrandbits
    cls, sep = p.cls, p.sep
    # Python's round(): half to even, as Google's script ran it.
    num_to_predict = min(p.max_predictions_per_seq, max(1, int(round(len(tokens) * p.masked_lm_prob))))
    # Candidate positions: every one but [CLS] and [SEP]; with whole-word masking, in groups of one word.
    sep_at = tokens.index(sep)
    if tokens[0] == cls and tokens.count(cls) == 1 and tokens.count(sep) == 2 and tokens[-1] == sep:
        candidates = [*range(1, sep_at), *range(sep_at + 1, len(tokens) - 1)]  # [CLS] A [SEP] B [SEP]
    else:  # the text itself held [CLS] or [SEP] ids
        candidates = [i for i, t in enumerate(tokens) if t != cls and t != sep]
    if not p.do_whole_word_mask:
        # Groups of one position: Google's loop takes the first num_to_predict of the shuffled candidates.
        _shuffle(candidates, getrandbits)
        picked = candidates[:num_to_predict]
    else:
        groups: list[list[int]] = []
        for i in candidates:
            # As Google: a "##" piece joins the group before it even across [SEP] (B cut mid-word: A's last word).
            if groups and p.continues_word[tokens[i]]:
                groups[-1].append(i)
            else:
                groups.append([i])
        _shuffle(groups, getrandbits)
        picked = []
        for group in groups:
            if len(picked) >= num_to_predict:
                break
            if len(picked) + len(group) > num_to_predict:  # a whole word that would overshoot is skipped
                continue
            # Google also skips groups holding an already-masked position; groups never share one, so never does.
            picked += group
    # The replacement draws, in the order the positions were picked.
    originals = [tokens[i] for i in picked]
    mask, word_ids, last_word = p.mask, p.word_ids, len(p.word_ids) - 1
    for i in picked:
        if random_() < 0.8:
            tokens[i] = mask
        elif random_() < 0.5:
            pass  # kept
        else:
            tokens[i] = word_ids[_randint(0, last_word, getrandbits)]
    order = sorted(range(len(picked)), key=picked.__getitem__)
    return [picked[k] for k in order], [originals[k] for k in order]


def _document_instances(documents: list[list[list[int]]], d: int, p: _Params, rng: random.Random) -> list[Instance]:
    """Google's create_instances_from_document: pack sentences of document `d` into A/B pairs near a target length."""
    document = documents[d]
    getrandbits = rng.getrandbits
    max_num_tokens = p.max_seq_length - 3  # room for [CLS], [SEP], [SEP]
    target = max_num_tokens
    if rng.random() < p.short_seq_prob:
        target = _randint(2, max_num_tokens, getrandbits)
    out = []
    chunk: list[list[int]] = []
    length = i = 0
    while i < len(document):
        chunk.append(document[i])
        length += len(document[i])
        if i == len(document) - 1 or length >= target:
            a_end = _randint(1, len(chunk) - 1, getrandbits) if len(chunk) >= 2 else 1
            a = list(itertools.chain.from_iterable(chunk[:a_end]))
            if len(chunk) == 1 or rng.random() < 0.5:
                is_random_next = True
                for _ in range(10):  # another document if ten draws find one (one document: itself)
                    other = _randint(0, len(documents) - 1, getrandbits)
                    if other != d:
                        break
                sentences = documents[other]
                b = []
                for sentence in itertools.islice(sentences, _randint(0, len(sentences) - 1, getrandbits), None):
                    b += sentence
                    if len(b) >= target - len(a):
                        break
                i -= len(chunk) - a_end  # the sentences B did not use are put back for the next instance
            else:
                is_random_next = False
                b = list(itertools.chain.from_iterable(chunk[a_end:]))
            a, b = _truncate(a, b, max_num_tokens, rng)
            assert a and b, "max_seq_length >= 5 leaves A and B a token each"
            tokens = [p.cls, *a, p.sep, *b, p.sep]
            positions, labels = _mask(tokens, p, rng)
            out.append(Instance(tokens, len(a), positions, labels, is_random_next))
            chunk, length = [], 0
        i += 1
    return out


def _features(instances: list[Instance], p: _Params) -> dict[str, np.ndarray]:
    """Instances -> Google's features as arrays: (N, max_seq_length), (N, max_predictions_per_seq), (N, 1)."""
    n, T, P = len(instances), p.max_seq_length, p.max_predictions_per_seq
    lengths = np.fromiter((len(x.tokens) for x in instances), np.int64, n)
    len_a = np.fromiter((x.len_a for x in instances), np.int64, n)
    counts = np.fromiter((len(x.positions) for x in instances), np.int64, n)
    real = np.arange(T) < lengths[:, None]  # (N, T), row-major like the flat concatenations below
    predicted = np.arange(P) < counts[:, None]  # (N, P)
    input_ids = np.zeros((n, T), np.int32)
    input_ids[real] = np.fromiter(itertools.chain.from_iterable(x.tokens for x in instances), np.int32)
    positions = np.zeros((n, P), np.int32)
    positions[predicted] = np.fromiter(itertools.chain.from_iterable(x.positions for x in instances), np.int32)
    ids = np.zeros((n, P), np.int32)
    ids[predicted] = np.fromiter(itertools.chain.from_iterable(x.labels for x in instances), np.int32)
    return {
        "input_ids": input_ids,
        "input_mask": real.astype(np.int32),
        "segment_ids": (real & (np.arange(T) >= len_a[:, None] + 2)).astype(np.int32),  # B from after A's [SEP]
        "masked_lm_positions": positions,
        "masked_lm_ids": ids,
        "masked_lm_weights": predicted.astype(np.float32),
        "next_sentence_labels": np.fromiter((x.is_random_next for x in instances), np.int32, n)[:, None],
    }


def _span_features(documents, lo: int, hi: int, p: _Params, rng: random.Random, tick=None) -> dict[str, np.ndarray]:
    """The instances of documents lo..hi-1, dupe_factor passes over them, as feature arrays."""
    instances: list[Instance] = []
    for _ in range(p.dupe_factor):
        for d in range(lo, hi):
            instances += _document_instances(documents, d, p, rng)
            if tick:
                tick(1)
    return _features(instances, p)


# --- worker processes --------------------------------------------------------------------------------------------

_worker: dict = {}


def _pack(documents: list[list[list[int]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Documents as flat arrays, cheap to send to a process: tokens, sentence ends, document ends (in sentences)."""
    sentences = [s for doc in documents for s in doc]
    tokens = np.fromiter(itertools.chain.from_iterable(sentences), np.int32)
    sentence_ends = np.cumsum([len(s) for s in sentences])
    doc_ends = np.cumsum([len(doc) for doc in documents])
    return tokens, sentence_ends, doc_ends


def _init_worker(packed: tuple[np.ndarray, np.ndarray, np.ndarray], p: _Params) -> None:
    tokens, sentence_ends, doc_ends = packed
    flat = tokens.tolist()
    starts = [0, *sentence_ends[:-1].tolist()]
    sentences = [flat[a:b] for a, b in zip(starts, sentence_ends.tolist(), strict=True)]
    doc_starts = [0, *doc_ends[:-1].tolist()]
    _worker["documents"] = [sentences[a:b] for a, b in zip(doc_starts, doc_ends.tolist(), strict=True)]
    _worker["params"] = p


def _run_task(task: tuple[int, int, str]) -> dict[str, np.ndarray]:
    lo, hi, seed = task
    return _span_features(_worker["documents"], lo, hi, _worker["params"], random.Random(seed))


# --- the pipeline ----------------------------------------------------------------------------------------------


def make_features(
    documents: list[list[list[int]]],
    cfg: CreatePretrainingDataConfig,
    tokenizer: WordPieceTokenizer,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """All instances of `documents` in output order, as Google's features (arrays of N rows).

    With `num_workers` > 1 the workers are spawned processes, which import the caller's main module: a script
    calling this needs the usual `if __name__ == "__main__":` guard.
    """
    p = _params(cfg, tokenizer)
    rng = random.Random(cfg.random_seed)
    documents = list(documents)
    rng.shuffle(documents)
    n = len(documents)
    with tqdm(
        total=n * cfg.dupe_factor, desc="documents", unit="doc", disable=not (progress and sys.stderr.isatty())
    ) as bar:
        if cfg.num_workers == 1:
            parts = [_span_features(documents, 0, n, p, rng, bar.update)]
        else:
            tasks = [
                (lo, min(lo + DOCS_PER_TASK, n), f"{cfg.random_seed}/{k}")
                for k, lo in enumerate(range(0, n, DOCS_PER_TASK))
            ]
            # spawn, not fork: the tokenizer's Rust threads are running, and fork copies locks held by them.
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(min(cfg.num_workers, len(tasks)), _init_worker, (_pack(documents), p)) as pool:
                parts = []
                for (lo, hi, _), part in zip(tasks, pool.imap(_run_task, tasks), strict=True):
                    parts.append(part)
                    bar.update((hi - lo) * cfg.dupe_factor)
    features = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    order = list(range(len(features["input_ids"])))
    _shuffle(order, rng.getrandbits)  # Google shuffles the instance list; the draws depend on its length only
    return {name: a[order] for name, a in features.items()}


def _payloads(features: dict[str, np.ndarray], fmt: str, bar: tqdm, chunk: int = 8192):
    """The serialized records of all rows, `chunk` rows per numpy pass (bounded memory beside the arrays)."""
    for lo in range(0, len(features["input_ids"]), chunk):
        rows = serialize_rows({name: a[lo : lo + chunk] for name, a in features.items()}, fmt)
        yield from rows
        bar.update(len(rows))


def write_features(
    features: dict[str, np.ndarray],
    cfg: CreatePretrainingDataConfig,
    sources: list[Path] = (),
    progress: bool = False,
) -> None:
    """Write the records: round-robin over the output files (Google's order), or one shard directory.

    Each file (or the directory) is written under a temporary name and renamed when complete.
    """
    outputs = [Path(s) for s in cfg.output_files()]
    for out in outputs:
        out.parent.mkdir(parents=True, exist_ok=True)
    if cfg.output_format == "shards":
        _write_shards(features, outputs[0], sources)
        return
    n, m = len(features["input_ids"]), len(outputs)
    with tqdm(total=n, desc="records", unit="rec", disable=not (progress and sys.stderr.isatty())) as bar:
        for k, out in enumerate(outputs):
            rows = {name: a[k::m] for name, a in features.items()}
            write_serialized(out, _payloads(rows, cfg.output_format, bar), cfg.output_format)


def _write_shards(features: dict[str, np.ndarray], out: Path, sources: list[Path]) -> None:
    """The layout `bertkit.data.loader.load_shards` reads: one (N, length) .npy per feature and meta.json."""
    from bertkit.data.loader import check_shards_output, shards_meta  # loader imports torch: only when needed

    check_shards_output(out, "--output_file")
    with atomic_output(out) as tmp:
        tmp.mkdir()
        for name, a in features.items():
            np.save(tmp / f"{name}.npy", a)
        meta = shards_meta(len(features["input_ids"]), features, [(p, "text") for p in sources])
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def _data_dir(cfg: CreatePretrainingDataConfig) -> Path | None:
    """Where the vocabulary is recorded: the shard directory, or the one folder all record files go to."""
    outputs = [Path(s) for s in cfg.output_files()]
    if cfg.output_format == "shards":
        return outputs[0]
    parents = {p.parent for p in outputs}
    return parents.pop() if len(parents) == 1 else None


def create_pretraining_data(cfg: CreatePretrainingDataConfig, progress: bool = False) -> dict:
    """Read, make instances, write; returns a summary (counts and seconds per phase)."""
    start = time.perf_counter()
    files = input_files(cfg.input_file)
    if cfg.output_format == "shards":  # refuse before the work, not after it
        from bertkit.data.loader import check_shards_output

        check_shards_output(Path(cfg.output_files()[0]), "--output_file")
    vocab, data_dir = cfg.vocab_file or default_vocab_path(), _data_dir(cfg)
    if cfg.check_casing:
        check_casing(cfg.do_lower_case, vocab)
    if data_dir is not None:
        check_data_vocab_target(data_dir, Path(vocab))
    tokenizer = make_tokenizer(cfg)
    documents = read_documents(files, tokenizer)
    read_s = time.perf_counter() - start
    features = make_features(documents, cfg, tokenizer, progress)
    make_s = time.perf_counter() - start - read_s
    write_features(features, cfg, files, progress)
    if data_dir is not None:  # what pretraining copies into its snapshots (vocab.data_vocab)
        record_data_vocab(data_dir, vocab, cfg.do_lower_case)
    seconds = time.perf_counter() - start
    real, weights = features["input_mask"].sum(), features["masked_lm_weights"].sum()
    return {
        "files": len(files),
        "documents": len(documents),
        "sentences": sum(len(d) for d in documents),
        "text_tokens": sum(len(s) for d in documents for s in d),
        "instances": len(features["input_ids"]),
        "instance_tokens": int(real),
        "masked_fraction": float(weights / real),
        "random_next_fraction": float(features["next_sentence_labels"].mean()),
        "read_s": read_s,
        "instances_s": make_s,
        "write_s": seconds - read_s - make_s,
        "seconds": seconds,
    }


def run(cfg: CreatePretrainingDataConfig) -> dict:
    s = create_pretraining_data(cfg, progress=True)
    print(
        f"create-pretraining-data: {s['documents']:,} documents ({s['sentences']:,} sentences, "
        f"{s['text_tokens']:,} tokens) from {s['files']} file(s) -> {s['instances']:,} instances "
        f"({s['instance_tokens']:,} tokens, {s['masked_fraction']:.1%} masked, "
        f"{s['random_next_fraction']:.1%} random next) in {cfg.output_format} at {cfg.output_file}; "
        f"{s['seconds']:.1f} s (read {s['read_s']:.1f}, instances {s['instances_s']:.1f}, write {s['write_s']:.1f}), "
        f"{s['instances'] / s['seconds']:.0f} instances/s"
    )
    return s
