"""WordPieceTokenizer against Google's FullTokenizer: SQuAD dev, every class of character where Rust's tables
differ from Python's, every code point, and a fuzz over arbitrary unicode.

The oracle is Hugging Face's port of Google's tokenizer (transformers' `BertTokenizerLegacy` pieces), with the
three places where it has drifted from google-research/bert @ eedf571 put back: transformers NFC-normalizes each
text before splitting it, its `_is_control` counts every C* category (so it drops unassigned, private-use and
surrogate code points that Google keeps), and its WordPiece default is 100 characters a word where Google's is 200.
We use Hugging Face's helpers for everything else (punctuation split, CJK, accent stripping, WordPiece).
"""

from __future__ import annotations

import functools
import itertools
import json
import unicodedata
from importlib import resources

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertkit.data.tokenizer import PLACEHOLDER, WordPieceTokenizer, load_vocab

legacy = pytest.importorskip(
    "transformers.models.bert.tokenization_bert_legacy", reason="transformers is the test oracle ([test] extra)"
)


def google_drops(ch: str) -> bool:
    """Google's `_clean_text` deletes NUL, U+FFFD and Cc/Cf other than \\t\\n\\r (transformers: all of C*)."""
    return ch in "\x00\ufffd" or (ch not in "\t\n\r" and unicodedata.category(ch) in ("Cc", "Cf"))


class GoogleBasicTokenizer(legacy.BasicTokenizer):
    """Google's BasicTokenizer: transformers' port without its NFC step and with Google's control characters."""

    def _clean_text(self, text: str) -> str:
        return "".join(" " if legacy._is_whitespace(ch) else ch for ch in text if not google_drops(ch))

    def tokenize(self, text: str) -> list[str]:
        words = []
        for word in self._tokenize_chinese_chars(self._clean_text(text)).split():
            if self.do_lower_case:
                word = self._run_strip_accents(word.lower())
            words.extend(self._run_split_on_punc(word))
        return " ".join(words).split()


class Google:
    """Google's FullTokenizer, assembled from the oracle parts."""

    def __init__(self, vocab: dict[str, int], do_lower_case: bool, max_input_chars_per_word: int = 200):
        self.vocab = vocab
        self.basic = GoogleBasicTokenizer(do_lower_case=do_lower_case)
        self.wordpiece = legacy.WordpieceTokenizer(vocab, "[UNK]", max_input_chars_per_word)

    def tokenize(self, text: str) -> list[str]:
        return [piece for word in self.basic.tokenize(text) for piece in self.wordpiece.tokenize(word)]

    def encode(self, text: str) -> list[int]:
        return [self.vocab[t] for t in self.tokenize(text)]


# --- fixtures: one tokenizer and one oracle per vocabulary, for the whole session -------------------------
# (`shared_data` is function-scoped, so the expensive parts are cached on their inputs instead.)


@functools.cache
def make_pair(path, do_lower_case: bool) -> tuple[WordPieceTokenizer, Google]:
    return WordPieceTokenizer(path, do_lower_case=do_lower_case), Google(load_vocab(path), do_lower_case)


@pytest.fixture(params=["uncased", "cased"])
def pair(request) -> tuple[WordPieceTokenizer, Google]:
    """(ours, Google's) for bert-base-uncased (do_lower_case=True) and bert-base-cased (False)."""
    if request.param == "uncased":  # shipped with bertkit, so these run without the shared data
        return make_pair(resources.files("bertkit") / "data" / "vocab-bert-base-uncased.txt", True)
    return make_pair(request.getfixturevalue("shared_data") / "vocab" / "bert-base-cased-vocab.txt", False)


@pytest.fixture(scope="module")
def uncased() -> WordPieceTokenizer:
    return WordPieceTokenizer()


@functools.cache
def read_squad(path) -> list[str]:
    articles = json.loads(path.read_text(encoding="utf-8"))["data"]
    texts = []
    for paragraph in itertools.chain.from_iterable(a["paragraphs"] for a in articles):
        texts.append(paragraph["context"])
        texts.extend(qa["question"] for qa in paragraph["qas"])
    return list(dict.fromkeys(texts))


@pytest.fixture
def squad_texts(shared_data) -> list[str]:
    """Every context and question of SQuAD v1.1 dev, each once (12,6xx texts, 2.2M characters)."""
    return read_squad(shared_data / "squad" / "dev-v1.1.json")


def google_form(text: str, do_lower_case: bool) -> str:
    """What Google's basic tokenizer makes of a span's characters: cleaned, lowercased and accent-stripped."""
    text = "".join(ch for ch in text if not google_drops(ch))
    if do_lower_case:
        text = "".join(ch for ch in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(ch) != "Mn")
    return text


def check_offsets(ours: WordPieceTokenizer, text: str) -> None:
    """Every token's span slices `text` to that token (modulo case, accents and '##').

    Tokens with the same span (one character that NFD turned into several pieces) are checked together.
    """
    tokens, offsets = ours.tokenize_with_offsets(text)
    assert len(tokens) == len(offsets)
    assert all(0 <= s < e <= len(text) for s, e in offsets), offsets
    assert [s for s, _ in offsets] == sorted(s for s, _ in offsets)
    for (start, end), group in itertools.groupby(zip(offsets, tokens, strict=True), key=lambda pair: pair[0]):
        pieces = [t for _, t in group]
        if len(pieces) == 1 and pieces[0].removeprefix("##") == text[start:end]:
            continue  # the common case, settled without normalizing
        if not span_holds(pieces, google_form(text[start:end], ours.do_lower_case)):
            # Uncased NFD puts combining marks in class order; a spacing mark so moved (U+1734 after U+0301) is
            # credited to the first place of its run of marks, so the token may end short of that run.
            end = next((i for i in range(end, len(text)) if not unicodedata.combining(text[i])), len(text))
            assert span_holds(pieces, google_form(text[start:end], ours.do_lower_case)), (text, start, end, pieces)


def span_holds(pieces: list[str], span: str) -> bool:
    if pieces == ["[UNK]"]:
        return bool(span) and not any(ch.isspace() for ch in span)
    # A lone Σ lowercases to σ, the same Σ ending a word to ς.
    return "".join(p.removeprefix("##") for p in pieces).replace("ς", "σ") == span.replace("ς", "σ")


def assert_same(ours: WordPieceTokenizer, google: Google, text: str) -> None:
    assert ours.tokenize(text) == google.tokenize(text), text
    assert ours.encode(text) == google.encode(text), text
    assert ours.basic_tokenize(text) == google.basic.tokenize(text), text
    check_offsets(ours, text)


# --- SQuAD dev: every question and context -----------------------------------------------------------------


def test_squad_dev_ids_equal_google(pair, squad_texts):
    ours, google = pair
    expected_words = [google.basic.tokenize(t) for t in squad_texts]
    expected = [[google.vocab[p] for w in words for p in google.wordpiece.tokenize(w)] for words in expected_words]
    assert ours.encode_batch(squad_texts) == expected  # the fast path, in one Rust call
    assert [ours.encode(t) for t in squad_texts] == expected
    assert [ours.basic_tokenize(t) for t in squad_texts] == expected_words


def test_squad_dev_offsets_slice_the_text(pair, squad_texts):
    ours, _ = pair
    for text in squad_texts:
        check_offsets(ours, text)


# --- each class of character where Rust's own tables differ from Google's -----------------------------------

# Found by comparing Rust's BertNormalizer/BertPreTokenizer/Lowercase/NFD with Python's unicodedata on every code
# point (tokenizers 0.23, Python 3.11 = Unicode 14); bertkit.data.tokenizer's docstring says how each is handled.
RUST_DIFFERS = {
    "private use (Co): Google keeps": "ab\ue000cd x\U000f0000 \U00100001y",
    "format chars newer than Rust (Cf): Google drops": "ab\u0890cd e\U00013430f \u08e2x",
    "punctuation newer than Rust (P*): Google splits": "ab\u2e5dcd e\U00010eadf \u2e55x\u2e56 a\u061db",
    "old punctuation Rust still splits (U+166D So, U+111C9 Mn)": "ab\u166dcd e\U000111c9f",
    "CJK U+2B820..2B91F: Google splits": "ab\U0002b820cd \U0002b91fx",
    "nonspacing marks newer than Rust (Mn): Google strips": "ab\u0898cd e\u07fdf e\u0301\u08cax",
    "U+1734 (Mc since Unicode 14): Rust strips": "ab\u1734cd",
    "NFD of U+11938 missing in Rust": "ab\U00011938cd",
    "unassigned in Python, lowercased by Rust": "AB\u1c89CD \ua7cbx \U00010d50y \ufa6e\ufadaz",
    "final sigma": "ΟΔΟΣ ΟΔΟΣ. ΑΣ.Α Σ ΑΣ\u200b Α\u200bΣ Α\x01Σ ΑΣ\u0301 ΑΣΑ ΑΣ中 ΑΣ' İΣ aΣ",
    "lone surrogates: Google keeps": "ab\ud800cd \udfffx",
    # The suspects the issue named, and their neighbours: each agrees already.
    "zero-width and BOM (Cf)": "ab\u200bcd e\u200cf\u200dg\u200eh\u200fi \ufeffj \u2060k \u00adl",
    "NUL and U+FFFD: dropped": "a\x00b c\ufffdd \x00 \ufffd",
    "controls and odd whitespace": "a\x01b\x7fc\x85d e\u2028f\u2029g\u3000h\xa0i\x0bj\x1ck\tl\nm\rn",
    "accents and compatibility characters": "Ébouriffé naïve İstanbul ǅemal ﬁnal Ω K Å ﬀ ſ ẞ ŉ",
    "combining marks alone": "\u0301 a \u0301\u0302 \u20dd",
    "CJK and Hangul": "中文字 한국어 日本語のテキスト \uf900\U0002f800",
    "emoji and symbols": "🙂👍🏽 👨‍👩‍👧 ¬ ° ± © ™ € ₹",
    "special-token strings are text": "[CLS] [MASK] [SEP] [PAD] [UNK] ##ing",
}


@pytest.mark.parametrize("text", RUST_DIFFERS.values(), ids=RUST_DIFFERS.keys())
def test_class_of_characters_matches_google(pair, text):
    assert_same(*pair, text)


def test_every_code_point_matches_google(pair):
    """Each code point between two letters, as the words of one long text per chunk of 8,192."""
    ours, google = pair
    planes = [range(0x0, 0x40000), range(0xE0000, 0xF0000)]  # every plane Unicode has assigned characters in
    samples = [range(0x40000, 0xE0000, 4099), range(0xF0000, 0x110000, 4099)]  # unassigned; private use
    cps = list(itertools.chain(*planes, *samples))
    for i in range(0, len(cps), 8192):
        text = " ".join(f"a{chr(cp)}b" for cp in cps[i : i + 8192])
        words = google.basic.tokenize(text)
        assert ours.basic_tokenize(text) == words, f"somewhere in U+{cps[i]:04X}.."
        assert ours.encode(text) == [google.vocab[p] for w in words for p in google.wordpiece.tokenize(w)]


# --- fuzz --------------------------------------------------------------------------------------------------

tricky = st.sampled_from(
    list("\x00\ufffd\u200b\u200c\u200d\u200e\u200f\ufeff\u00ad\x01\x85\u2028\u3000\xa0\t\n\r Σσς İı\ud800")
    + list("\u0301\u0308\u0327\u20dd\ue000\U000f0000\u0890\u2e5d\u166d\U000111c9\u1734\U00011938\u1c89\u0378")
    + list("中\uf900\U0002b820한ᄒ🙂👍🏽\u2e55.,-'#[]")
)
letters = st.sampled_from("aeiouAEIOUΑΣ")
chars = st.one_of(tricky, letters, st.characters(exclude_categories=()))  # the last: any code point at all
# Lists joined, not st.text: text() would merge the alphabets into one set and rarely draw the tricky ones.
words = st.one_of(
    st.lists(chars, max_size=12).map("".join),
    # Near the 100-character limit: a short piece repeated (drawing 200 characters one by one would be slow).
    st.builds(
        lambda piece, n: (piece * n)[:n],
        st.lists(st.sampled_from("abcdeéEÉ\u0301"), min_size=1, max_size=4).map("".join),
        st.integers(95, 210),
    ),
)
separators = st.sampled_from(["", " ", "\t", "\n", "\u3000", "\x00 "])
texts = st.lists(st.tuples(words, separators), max_size=8).map(lambda ws: "".join(w + s for w, s in ws))


# `pair` hands out the same two tokenizers every time, which hold no state between calls.
@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(text=texts)
def test_fuzz_matches_google(pair, text):
    assert_same(*pair, text)


@settings(max_examples=50, deadline=None, derandomize=True, database=None)
@given(batch=st.lists(texts, max_size=6))
def test_encode_batch_equals_encode(uncased, batch):
    assert uncased.encode_batch(batch) == [uncased.encode(t) for t in batch]


# --- words too long ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [100, 200])  # Hugging Face's default, Google's
def test_long_words_become_unk(limit):
    ours = WordPieceTokenizer(max_input_chars_per_word=limit)
    google = Google(ours.vocab, do_lower_case=True, max_input_chars_per_word=limit)
    for n in (limit - 1, limit, limit + 1):
        # precomposed é is one character, but after NFD and stripping the count that matters is the same
        for word in ("a" * n, "é" * n, "e\u0301" * n, "𝐀" * n):
            assert ours.tokenize(word + " ok") == google.tokenize(word + " ok")
    assert ours.tokenize("a" * (limit + 1)) == ["[UNK]"]


def test_the_default_word_limit_is_googles():
    """Google's FullTokenizer builds its WordpieceTokenizer with the default limit, 200 characters."""
    word = "a" * 150 + " ok"
    assert WordPieceTokenizer().tokenize(word) == Google(WordPieceTokenizer().vocab, do_lower_case=True,
                                                         max_input_chars_per_word=200).tokenize(word)  # fmt: skip
    assert WordPieceTokenizer().tokenize("a" * 201) == ["[UNK]"] and WordPieceTokenizer().tokenize("a" * 200) != [
        "[UNK]"
    ]


# --- the vocabulary ----------------------------------------------------------------------------------------


def test_default_vocabulary_is_bert_base_uncased(uncased):
    assert len(uncased.vocab) == len(uncased.inv_vocab) == 30522
    assert (uncased.pad_id, uncased.unk_id, uncased.cls_id, uncased.sep_id, uncased.mask_id) == (0, 100, 101, 102, 103)
    assert all(uncased.vocab[t] == i for i, t in enumerate(uncased.inv_vocab))
    assert uncased.tokenize("unaffable") == ["una", "##ffa", "##ble"]
    assert uncased.tokenize("Hello, WORLD!") == ["hello", ",", "world", "!"]


def test_cased_vocabulary(shared_data):
    cased = WordPieceTokenizer(shared_data / "vocab" / "bert-base-cased-vocab.txt", do_lower_case=False)
    assert (cased.pad_id, cased.unk_id, cased.cls_id, cased.sep_id, cased.mask_id) == (0, 100, 101, 102, 103)
    assert cased.tokenize("Hello, WORLD! Café") == ["Hello", ",", "W", "##OR", "##LD", "!", "Café"]


def test_convert_tokens_and_ids(uncased):
    tokens = uncased.tokenize("The quick brown fox")
    assert uncased.convert_ids_to_tokens(uncased.convert_tokens_to_ids(tokens)) == tokens
    with pytest.raises(ValueError, match="not in the vocabulary"):
        uncased.convert_tokens_to_ids(["no-such-token"])
    for bad in (-1, 30522):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            uncased.convert_ids_to_tokens([bad])


SPECIALS = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n"


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "is empty"),
        ("\n", None),  # one empty token: Google keeps it too, so it is not an error, but [PAD] & co. are missing
        ("[PAD]\n[UNK]\n[CLS]\nhello\n", r"lacks the special tokens \[SEP\], \[MASK\]"),
        (SPECIALS + "hello\nworld\nhello\n", r"line 8: token 'hello' already on line 6"),
        (SPECIALS + "a\ufdd0\n", "U\\+FDD0"),
    ],
)
def test_bad_vocabulary_files(tmp_path, content, message):
    path = tmp_path / "vocab.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message or "lacks the special tokens") as err:
        WordPieceTokenizer(path)
    assert str(path) in str(err.value)


def test_missing_and_undecodable_vocabulary(tmp_path):
    with pytest.raises(ValueError, match="not found") as err:
        WordPieceTokenizer(tmp_path / "nope.txt")
    assert "nope.txt" in str(err.value)
    path = tmp_path / "latin1.txt"
    path.write_bytes(SPECIALS.encode() + "café\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        WordPieceTokenizer(path)


def test_vocabulary_lines_are_stripped_as_google_does(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\r\n[UNK] \n[CLS]\n[SEP]\n[MASK]\nhello\n", encoding="utf-8")
    ours = WordPieceTokenizer(path)
    assert ours.vocab["[UNK]"] == 1 and ours.encode("hello there") == [5, 1]


def test_placeholder_is_a_noncharacter():
    # Unassigned in every Unicode version, so Rust's and Python's tables agree on it forever.
    assert unicodedata.category(PLACEHOLDER) == "Cn" and 0xFDD0 <= ord(PLACEHOLDER) <= 0xFDEF
