"""Google's instance algorithm (create_pretraining_data.py's create_instances_from_document and
create_masked_lm_predictions), in token ids, and the compact arrays a chunk's instances are kept in.

Reference: google-research/bert @ eedf571 `create_pretraining_data.py`. Every `random.Random` draw is made in
Google's order (the order is written out in `tasks/pretrain/data.py`'s docstring), so one chunk made with
Google's seed gives Google's records; tests/tasks/test_pretraining_data.py checks four files Google's script wrote.

Memory: a chunk's instances are packed every `BLOCK` instances into `Compact` arrays (about 0.65 KB per instance
at seq 128 / 20 predictions, against ~5 KB as Python lists), and its sentences are `array('i')` (4 bytes a token,
not the 36 of a list of Python ints): with them a chunk costs about 21 MB of memory per MiB of text at seq 128,
dupe 5 (benchmarks/README.md, "Pretraining on a real corpus").
"""

from __future__ import annotations

import itertools
import random
from array import array
from typing import NamedTuple

import numpy as np

BLOCK = 4096  # instances packed into arrays at a time

Documents = list[list[array]]  # documents -> sentences -> token ids (array('i'))


class Params(NamedTuple):
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


def make_params(cfg, tokenizer) -> Params:
    """The Params of a CreatePretrainingDataConfig and a WordPieceTokenizer."""
    vocab = tokenizer.vocab
    continues = bytearray(max(vocab.values()) + 1)
    for token, i in vocab.items():
        continues[i] = token.startswith("##")
    return Params(
        cfg.masking.max_seq_length,
        cfg.masking.max_predictions_per_seq,
        cfg.masking.masked_lm_prob,
        cfg.masking.short_seq_prob,
        cfg.masking.do_whole_word_mask,
        cfg.masking.dupe_factor,
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


def _mask(tokens: list[int], p: Params, rng: random.Random) -> tuple[list[int], list[int]]:
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


def _document_instances(documents: Documents, d: int, p: Params, rng: random.Random) -> list[Instance]:
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


class Compact(NamedTuple):
    """A chunk's instances as arrays of N rows: `expand` turns rows into Google's features."""

    tokens: np.ndarray  # (N, T) int32, [CLS] A [SEP] B [SEP] masked, zero-padded
    length: np.ndarray  # (N,) int16, real tokens
    len_a: np.ndarray  # (N,) int16, tokens of A
    positions: np.ndarray  # (N, P) int16, masked positions ascending, zero-padded
    labels: np.ndarray  # (N, P) int32, the original ids there
    count: np.ndarray  # (N,) int16, masked positions
    is_random_next: np.ndarray  # (N,) bool

    def __len__(self) -> int:
        return len(self.length)

    def take(self, rows) -> Compact:
        return Compact(*(a[rows] for a in self))


def _compact(instances: list[Instance], p: Params) -> Compact:
    n, T, P = len(instances), p.max_seq_length, p.max_predictions_per_seq
    length = np.fromiter((len(x.tokens) for x in instances), np.int16, n)
    count = np.fromiter((len(x.positions) for x in instances), np.int16, n)
    tokens = np.zeros((n, T), np.int32)
    tokens[np.arange(T) < length[:, None]] = np.fromiter(
        itertools.chain.from_iterable(x.tokens for x in instances), np.int32
    )
    predicted = np.arange(P) < count[:, None]
    positions = np.zeros((n, P), np.int16)
    positions[predicted] = np.fromiter(itertools.chain.from_iterable(x.positions for x in instances), np.int16)
    labels = np.zeros((n, P), np.int32)
    labels[predicted] = np.fromiter(itertools.chain.from_iterable(x.labels for x in instances), np.int32)
    len_a = np.fromiter((x.len_a for x in instances), np.int16, n)
    nsp = np.fromiter((x.is_random_next for x in instances), bool, n)
    return Compact(tokens, length, len_a, positions, labels, count, nsp)


def _concat(blocks: list[Compact], p: Params) -> Compact:
    if not blocks:
        return _compact([], p)
    return blocks[0] if len(blocks) == 1 else Compact(*(np.concatenate(a) for a in zip(*blocks, strict=True)))


def expand(c: Compact) -> dict[str, np.ndarray]:
    """Rows of `c` -> Google's features: (N, T) input_ids, input_mask, segment_ids; (N, P) masked_lm_positions,
    masked_lm_ids, masked_lm_weights (float32); (N, 1) next_sentence_labels; int32 but the weights."""
    T, P = c.tokens.shape[1], c.positions.shape[1]
    real = np.arange(T) < c.length[:, None]  # (N, T)
    predicted = np.arange(P) < c.count[:, None]  # (N, P)
    return {
        "input_ids": c.tokens,
        "input_mask": real.astype(np.int32),
        "segment_ids": (real & (np.arange(T) >= c.len_a[:, None].astype(np.int32) + 2)).astype(np.int32),  # B
        "masked_lm_positions": c.positions.astype(np.int32),
        "masked_lm_ids": c.labels,
        "masked_lm_weights": predicted.astype(np.float32),
        "next_sentence_labels": c.is_random_next.astype(np.int32)[:, None],
    }


def chunk_instances(documents: Documents, p: Params, rng: random.Random) -> tuple[Compact, list[int]]:
    """Google's main loop over one input (here: a chunk): shuffle the documents, `dupe_factor` passes making
    instances, then the shuffled output order. Returns the instances in making order and the order to write
    them in (Google's `rng.shuffle(instances)`: the draws depend on the count alone, so shuffling indices
    gives the same permutation)."""
    rng.shuffle(documents)
    blocks: list[Compact] = []
    pending: list[Instance] = []
    for _ in range(p.dupe_factor):
        for d in range(len(documents)):
            pending += _document_instances(documents, d, p, rng)
            if len(pending) >= BLOCK:
                blocks.append(_compact(pending, p))
                pending = []
    blocks.append(_compact(pending, p))
    instances = _concat(blocks, p)
    order = list(range(len(instances)))
    _shuffle(order, rng.getrandbits)
    return instances, order
