"""WordPiece tokenization with exactly the ids of Google BERT's `tokenization.FullTokenizer`, run in Rust.

Reference: google-research/bert @ eedf571 `tokenization.py`. For each text Google

1. drops NUL, U+FFFD and control and format characters (categories Cc, Cf; \\t \\n \\r count as whitespace) and
   turns whitespace (Zs, \\t \\n \\r) into spaces;
2. puts spaces around CJK ideographs (a fixed list of code point ranges) and splits on whitespace (`str.split`);
3. if uncased: `str.lower()`, NFD, then drops nonspacing marks (Mn), i.e. lowercases and strips accents;
4. splits off every punctuation character (ASCII other than letters and digits, and Unicode P*);
5. runs greedy longest-match-first WordPiece on each word: a word with no match, or longer than
   `max_input_chars_per_word` characters, becomes [UNK].

Hugging Face's `tokenizers` (Rust) does the work. Its ready-made BertNormalizer and BertPreTokenizer follow the
same recipe with their own character tables, and so differ from Google on these classes (tokenizers 0.23 against
Python 3.11, Unicode 14; `tests/test_tokenizer.py` has a test for each and fuzzes the rest):

- private-use characters (Co): Google keeps them as letters, Rust drops them;
- format characters newer than Rust's table (U+0890, U+13430, ...): Google drops them, Rust keeps them;
- punctuation newer than Rust's table (U+2E5D, ...): Google splits it off, Rust does not; U+166D and U+111C9,
  punctuation in older Unicode, Rust still splits off;
- CJK U+2B820..U+2B91F: in Google's list of ranges, not in Rust's;
- nonspacing marks newer than Rust's table (U+0898, ...): Google strips them, Rust keeps them; U+1734 (a spacing
  mark since Unicode 14) Rust strips;
- NFD: Rust lacks the decomposition of U+11938;
- lowercase: Rust lowercases characters that Python's Unicode does not know yet (U+1C89, ...), and never writes a
  final sigma, where Python's `str.lower()` turns a word-final Σ into ς;
- lone surrogates, which a Python str may hold, cannot cross into Rust at all.

So the pipeline is assembled from Rust's generic parts (Replace, Lowercase, NFD, Split, WordPiece), given Google's
character classes as Python's `unicodedata` (the tables Google's code reads) defines them; that settles the first
five. The rest are corrected around Rust's parts:

- `_rust_table_patches`: a character whose lowercase or NFD Rust's tables get wrong is first rewritten to Python's
  answer (the list is made at first use, so a newer Python or tokenizers needs no code change);
- when uncased, characters this Python calls unassigned (Cn) become `PLACEHOLDER` before Rust lowercases;
- `_final_sigmas` writes ς where `str.lower()` would, and lone surrogates become `PLACEHOLDER`, before the call.

Those made in Python replace one character by one, so the offsets Rust reports still index the caller's text.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import os
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

from tokenizers import Encoding, PreTokenizedString, Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordPiece

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
DEFAULT_VOCAB = "data/vocab-bert-base-uncased.txt"  # inside the bertkit package

# Google's `_is_chinese_char`: the CJK Unified Ideographs blocks as of 2018, inclusive.
CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)

# A noncharacter: unassigned in every Unicode version, so no table (Python's or Rust's) will ever case-map,
# decompose, split or drop it. It stands in for characters Google keeps as opaque letters but Rust would
# change or cannot take; a word holding either is [UNK], as neither is in the vocabulary.
PLACEHOLDER = "\ufdd0"
_SURROGATE = re.compile("[\ud800-\udfff]")


def _google_drops(ch: str) -> bool:
    """Google's `_clean_text` deletes NUL, U+FFFD and Cc/Cf characters other than \\t \\n \\r."""
    return ch in "\x00\ufffd" or (ch not in "\t\n\r" and unicodedata.category(ch) in ("Cc", "Cf"))


def _ranges(cps: list[int]) -> list[tuple[int, int]]:
    """Sorted code points -> inclusive (first, last) runs."""
    runs: list[tuple[int, int]] = []
    for cp in cps:
        if runs and runs[-1][1] == cp - 1:
            runs[-1] = (runs[-1][0], cp)
        else:
            runs.append((cp, cp))
    return runs


def _minus(runs: list[tuple[int, int]], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The code points of `runs` that are in none of `holes` (both inclusive runs), as runs."""
    out = []
    for lo, hi in runs:
        for hole_lo, hole_hi in sorted(holes):
            if hole_hi < lo or hole_lo > hi:
                continue
            if hole_lo > lo:
                out.append((lo, hole_lo - 1))
            lo = hole_hi + 1
        if lo <= hi:
            out.append((lo, hi))
    return out


def _regex(runs: list[tuple[int, int]]) -> Regex:
    """One character class for Rust's regex engine (Oniguruma syntax)."""
    parts = (f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in runs)
    return Regex("[" + "".join(parts) + "]")


@dataclass(frozen=True)
class _GoogleClasses:
    """Google's character classes as inclusive code point runs, read from Python's unicodedata."""

    drop: list[tuple[int, int]]  # deleted by _clean_text
    space: list[tuple[int, int]]  # word breaks (U+0020 itself left out: replacing it by itself costs time)
    split: list[tuple[int, int]]  # punctuation and CJK: each its own word
    mark: list[tuple[int, int]]  # Mn, stripped after NFD when uncased
    unknown: list[tuple[int, int]]  # unassigned (Cn) outside the CJK ranges: Google leaves them alone
    lower_or_nfd: list[str]  # characters that str.lower() or NFD changes


@functools.cache
def _google_classes() -> _GoogleClasses:
    # The categories of all 1.1M code points, in about 4,000 runs, at C speed; only the ~150,000 assigned,
    # non-private code points are then looked at one by one (about 0.3 s, once per process).
    categories = itertools.groupby(map(unicodedata.category, map(chr, range(0x110000))))
    drop, space, punct, mark, unknown, changing = [], [], [], [], [], []
    lo = 0
    for cat, run in categories:
        hi = lo + len(list(run)) - 1
        if cat == "Cn":
            unknown.append((lo, hi))
        elif cat not in ("Co", "Cs"):  # private use and lone surrogates: letters to Google, nothing to do
            for cp in range(lo, hi + 1):
                ch = chr(cp)
                if cp in (0, 0xFFFD) or (cat in ("Cc", "Cf") and ch not in "\t\n\r"):  # = _google_drops(ch)
                    drop.append(cp)
                elif cat == "Zs" or ch.isspace():  # Google's _is_whitespace, then str.split's own (U+2028, ...)
                    if ch != " ":  # replacing U+0020 by itself would only cost time
                        space.append(cp)
                elif cat[0] == "P" or (cp < 128 and not ch.isalnum()):  # Google's _is_punctuation: P* and the
                    punct.append(cp)  # ASCII left after the branches above (33..47, 58..64, 91..96, 123..126)
                if cat == "Mn":
                    mark.append(cp)
                if ch.lower() != ch or not unicodedata.is_normalized("NFD", ch):
                    changing.append(ch)
        lo = hi + 1
    return _GoogleClasses(
        drop=_ranges(drop),
        space=_ranges(space),
        split=_ranges(punct) + list(CJK_RANGES),  # the CJK ranges, assigned or not, whatever their category
        mark=_ranges(mark),
        unknown=_minus(unknown, list(CJK_RANGES)),
        lower_or_nfd=changing,
    )


@functools.cache
def _rust_table_patches() -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """Where Rust's Lowercase or NFD tables disagree with Python's: (char, Python's answer) pairs for each.

    Checked at first use over every character that Python's `str.lower()` or NFD changes, so a newer Python or
    `tokenizers` is handled without a code change (with tokenizers 0.23 and Python 3.11: NFD of U+11938).
    """
    rust_lower, rust_nfd = normalizers.Lowercase(), normalizers.NFD()
    lower = tuple(
        (ch, ch.lower()) for ch in _google_classes().lower_or_nfd if rust_lower.normalize_str(ch) != ch.lower()
    )
    nfd = tuple(
        (ch, unicodedata.normalize("NFD", ch))
        for ch in _google_classes().lower_or_nfd
        if rust_nfd.normalize_str(ch) != unicodedata.normalize("NFD", ch)
    )
    return lower, nfd


def _final_sigmas(text: str) -> str:
    """`text` with each Σ that Google's `str.lower()` makes final already written as ς.

    Python lowercases Σ to ς at the end of a word, judged on the cleaned text (dropped characters gone); Rust's
    Lowercase maps one character at a time and always writes σ. Only texts holding a Σ pay for this.
    """
    kept = [i for i, ch in enumerate(text) if not _google_drops(ch)]
    lowered = "".join(text[i] for i in kept).lower()
    out = list(text)
    pos = 0  # where text[i]'s lowercase starts in `lowered` (İ lowercases to two characters)
    for i in kept:
        if text[i] == "Σ" and lowered[pos] == "ς":
            out[i] = "ς"
        pos += len(text[i].lower())
    return "".join(out)


def load_vocab(vocab_file: str | os.PathLike | None = None) -> dict[str, int]:
    """Read a Google `vocab.txt`: one token per line, id = line number (from 0), each line stripped as Google does.

    `None` reads the bert-base-uncased vocabulary shipped with bertkit. Raises ValueError naming the file for a
    missing or empty file, a duplicated token (with both line numbers) or a missing special token.
    """
    if vocab_file is None:
        name = f"bertkit/{DEFAULT_VOCAB}"
        text = resources.files("bertkit").joinpath(DEFAULT_VOCAB).read_text(encoding="utf-8")
    else:
        name = os.fspath(vocab_file)
        try:
            with open(vocab_file, encoding="utf-8") as fh:
                text = fh.read()
        except FileNotFoundError:
            raise ValueError(f"{name}: vocabulary file not found") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{name}: vocabulary file is not UTF-8 ({e.reason} at byte {e.start})") from None
        except OSError as e:
            raise ValueError(f"{name}: cannot read vocabulary file ({e.strerror})") from None
    lines = text.split("\n")
    if lines[-1] == "":  # the newline that ends the last line does not open another
        lines.pop()
    if not lines:
        raise ValueError(f"{name}: vocabulary file is empty")
    vocab: dict[str, int] = {}
    for i, line in enumerate(lines):
        token = line.strip()
        if token in vocab:
            raise ValueError(f"{name}, line {i + 1}: token {token!r} already on line {vocab[token] + 1}")
        vocab[token] = i
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"{name}: vocabulary lacks the special tokens {', '.join(missing)}")
    return vocab


class WordPieceTokenizer:
    """Google BERT's FullTokenizer (basic tokenization, then WordPiece) with the same ids, run by `tokenizers`.

    `vocab_file`: a Google `vocab.txt`; None for the bert-base-uncased vocabulary shipped with bertkit.
    `do_lower_case`: True for uncased models (lowercase and strip accents), False for cased ones (keep both).
    `max_input_chars_per_word`: longer words become [UNK]; 200 as in Google's FullTokenizer (Hugging Face: 100).
    No [CLS]/[SEP] is added, and special-token strings in the text are tokenized as text ("[", "mask", "]"),
    as Google does.
    """

    def __init__(
        self,
        vocab_file: str | os.PathLike | None = None,
        do_lower_case: bool = True,
        max_input_chars_per_word: int = 200,
    ):
        if max_input_chars_per_word <= 0:
            raise ValueError(f"max_input_chars_per_word must be positive, got {max_input_chars_per_word}")
        self.vocab_file = f"bertkit/{DEFAULT_VOCAB}" if vocab_file is None else os.fspath(vocab_file)
        self.vocab: dict[str, int] = load_vocab(vocab_file)
        self.inv_vocab: list[str] = list(self.vocab)  # ids are 0..n-1 in order, duplicates having been refused
        self.do_lower_case = do_lower_case
        self.max_input_chars_per_word = max_input_chars_per_word
        if any(PLACEHOLDER in token for token in self.vocab):
            raise ValueError(f"{self.vocab_file}: the vocabulary holds U+FDD0, a noncharacter bertkit reserves")
        # The unassigned characters that become the placeholder when uncased. A vocabulary made under a newer
        # Unicode may hold some that this Python calls unassigned: those must reach WordPiece as they are.
        in_vocab = [(ord(ch), ord(ch)) for ch in set("".join(self.vocab)) if unicodedata.category(ch) == "Cn"]
        self._unknown = _minus(_google_classes().unknown, in_vocab) if do_lower_case else []
        self._rust = Tokenizer(
            WordPiece(self.vocab, unk_token="[UNK]", max_input_chars_per_word=max_input_chars_per_word)
        )
        self._rust.normalizer = self._normalizer()
        # Spaces are the only word breaks left after the normalizer; punctuation and CJK become words of their own.
        self._rust.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.CharDelimiterSplit(" "), pre_tokenizers.Split(_regex(_google_classes().split), "isolated")]
        )

    def _normalizer(self) -> normalizers.Normalizer:
        """Google's steps 1 and 3 as Rust normalizers, with Google's classes and Python's lowercase and NFD."""
        g = _google_classes()
        steps = [normalizers.Replace(_regex(g.drop), ""), normalizers.Replace(_regex(g.space), " ")]
        if self.do_lower_case:
            lower_patches, nfd_patches = _rust_table_patches()
            steps += [
                # Characters Python does not know yet stay as they are in Google's code; Rust's newer tables
                # would lowercase some of them, so they become the placeholder (either makes its word [UNK]).
                normalizers.Replace(_regex(self._unknown), PLACEHOLDER),
                *(normalizers.Replace(ch, low) for ch, low in lower_patches),
                normalizers.Lowercase(),
                *(normalizers.Replace(ch, dec) for ch, dec in nfd_patches),
                normalizers.NFD(),
                normalizers.Replace(_regex(g.mark), ""),
            ]
        return normalizers.Sequence(steps)

    def _prepare(self, text: str) -> str:
        """The two corrections Rust's pipeline cannot express, each one character for one."""
        if self.do_lower_case and "Σ" in text:
            text = _final_sigmas(text)
        if not text.isascii() and _SURROGATE.search(text):
            text = _SURROGATE.sub(PLACEHOLDER, text)  # Google keeps them as letters; Rust cannot take them
        return text

    def _encode(self, text: str) -> Encoding:
        return self._rust.encode(self._prepare(text), add_special_tokens=False)

    def tokenize(self, text: str) -> list[str]:
        """WordPiece strings ("##" marks a continuation), as Google's `FullTokenizer.tokenize`."""
        return self._encode(text).tokens

    def tokenize_with_offsets(self, text: str) -> tuple[list[str], list[tuple[int, int]]]:
        """Tokens and, for each, the [start, end) character span in `text` it came from.

        Pieces of one word point into that word; an [UNK] spans its whole word; when one character becomes
        several tokens (uncased Hangul decomposing into jamo, say), each of them spans that character. One
        quirk of Rust's alignment: when uncased NFD reorders combining marks (a spacing mark of nonzero class,
        such as U+1734, after a nonspacing one), the moved mark is credited to the first place of its run, so a
        token can end short of the marks that followed it.
        """
        enc = self._encode(text)
        return enc.tokens, enc.offsets

    def encode(self, text: str) -> list[int]:
        """Token ids, without [CLS] or [SEP]."""
        return self._encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` of each text, in one Rust call that runs on all cores."""
        encodings = self._rust.encode_batch([self._prepare(t) for t in texts], add_special_tokens=False)
        return [e.ids for e in encodings]

    def basic_tokenize(self, text: str) -> list[str]:
        """Google's `BasicTokenizer.tokenize`: cleaned, split at whitespace, punctuation and CJK; lowercased and
        accent-stripped if uncased. SQuAD maps predicted answers back to the original text with it."""
        prepared = self._prepare(text)
        pretok = PreTokenizedString(prepared)
        pretok.normalize(self._rust.normalizer.normalize)
        self._rust.pre_tokenizer.pre_tokenize(pretok)
        words = []
        for word, (start, end), _ in pretok.get_splits(offset_referential="original", offset_type="char"):
            if PLACEHOLDER in word:  # put back the characters it stands for: in order, as NFD moves only marks
                stood_for = iter(ch for ch in text[start:end] if self._becomes_placeholder(ch))
                word = "".join(next(stood_for) if ch == PLACEHOLDER else ch for ch in word)
            words.append(word)
        return words

    def _becomes_placeholder(self, ch: str) -> bool:
        cp = ord(ch)
        i = bisect.bisect_right(self._unknown, (cp, 0x110000)) - 1  # the last run starting at or before cp
        return ch == PLACEHOLDER or 0xD800 <= cp <= 0xDFFF or (i >= 0 and cp <= self._unknown[i][1])

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        """Vocabulary lookup; a token not in the vocabulary is a ValueError (Google raises KeyError)."""
        try:
            return [self.vocab[t] for t in tokens]
        except KeyError as e:
            raise ValueError(f"token {e.args[0]!r} is not in the vocabulary") from None

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        """Inverse of `convert_tokens_to_ids`; an id outside [0, vocabulary size) is a ValueError."""
        out = []
        for i in ids:
            if not 0 <= i < len(self.inv_vocab):
                raise ValueError(f"token id {i} is outside the vocabulary (size {len(self.inv_vocab)})")
            out.append(self.inv_vocab[i])
        return out

    @property
    def cls_id(self) -> int:
        return self.vocab["[CLS]"]

    @property
    def sep_id(self) -> int:
        return self.vocab["[SEP]"]

    @property
    def mask_id(self) -> int:
        return self.vocab["[MASK]"]

    @property
    def pad_id(self) -> int:
        return self.vocab["[PAD]"]

    @property
    def unk_id(self) -> int:
        return self.vocab["[UNK]"]
