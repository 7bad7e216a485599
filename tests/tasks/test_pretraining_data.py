"""`bertkit create-pretraining-data` against Google's create_pretraining_data.py (google-research/bert @ eedf571).

The golden files under ../shared/data/golden were written by Google's own script (flags in SOURCES.md); bertkit must
write the same instances, every feature of every record equal, from the same text and seed, without TensorFlow.
The other tests use a small synthetic corpus and the packaged vocabulary, so they run without the shared data.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest

from bertkit.cli import main
from bertkit.data.loader import PretrainingLoader
from bertkit.data.records import read_tfrecord
from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.data.vocab import data_vocab, default_vocab_path
from bertkit.runtime.atomic import OutputError
from bertkit.tasks.pretrain import data as P
from bertkit.tasks.pretrain import instances as G
from bertkit.tasks.pretrain.data import CreatePretrainingDataConfig, create_pretraining_data

UNCASED, CASED = "vocab/bert-base-uncased-vocab.txt", "vocab/bert-base-cased-vocab.txt"
SAMPLE, WIKITEXT = "text/google-sample_text.txt", "text/wikitext2-bytes-1012069-1211521.txt"
GOLDEN = {  # golden file -> (text, vocabulary, flags other than Google's defaults)
    "google-cpd-sample_text-wwmFalse": (SAMPLE, UNCASED, {}),
    "google-cpd-sample_text-wwmTrue": (SAMPLE, UNCASED, {"do_whole_word_mask": True}),
    "google-cpd-wt-uncased-seq512": (
        WIKITEXT,
        UNCASED,
        {"max_seq_length": 512, "max_predictions_per_seq": 80, "dupe_factor": 1},
    ),
    "google-cpd-wt-cased-seq128": (WIKITEXT, CASED, {"do_lower_case": False, "dupe_factor": 1}),
}
FEATURES = (
    "input_ids",
    "input_mask",
    "segment_ids",
    "masked_lm_positions",
    "masked_lm_ids",
    "masked_lm_weights",
    "next_sentence_labels",
)


@pytest.mark.parametrize("name", GOLDEN)
def test_same_records_as_google(shared_data, tmp_path, name):
    text, vocab, flags = GOLDEN[name]
    out = tmp_path / "out.tfrecord"
    cfg = CreatePretrainingDataConfig.from_flags(
        input_file=str(shared_data / text), output_file=str(out), vocab_file=str(shared_data / vocab), **flags
    )
    create_pretraining_data(cfg)
    ours, google = list(read_tfrecord(out)), list(read_tfrecord(shared_data / "golden" / f"{name}.tfrecord"))
    assert len(ours) == len(google)
    differ = []
    for i, (a, b) in enumerate(zip(ours, google, strict=True)):
        assert sorted(a) == sorted(b) == sorted(FEATURES)
        differ += [(i, f) for f in FEATURES if not np.array_equal(a[f], b[f])]
    assert not differ, f"{len(differ)} features differ from Google's, first (record, feature): {differ[:5]}"


# --- a synthetic corpus -------------------------------------------------------------------------------------------

WORDS = (
    "the a of and to in is was it for on that with as by his her they at from this be are an which or had "
    "were not but their one all has have been would there who when city river music film century king war "
    "tokenization preprocessing unbelievably misunderstanding photosynthesis hyperparameters embeddings "
    "transformers bidirectional"  # several WordPieces each, for whole-word masking
).split()


def write_corpus(path: Path, documents: int = 20, seed: int = 0) -> Path:
    """`documents` documents of 1-12 sentences of 3-25 words, Google's format: a blank line between documents."""
    rng = random.Random(seed)
    docs = []
    for _ in range(documents):
        sentences = [" ".join(rng.choices(WORDS, k=rng.randint(3, 25))) + "." for _ in range(rng.randint(1, 12))]
        docs.append("\n".join(sentences))
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer() -> WordPieceTokenizer:
    return P.make_tokenizer(CreatePretrainingDataConfig.from_flags(input_file="in.txt", output_file="out"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("text") / "corpus.txt")


def features_of(corpus: Path, tokenizer: WordPieceTokenizer, **flags) -> dict[str, np.ndarray]:
    cfg = CreatePretrainingDataConfig.from_flags(input_file=str(corpus), output_file="unused", **flags)
    return P.make_features(P.read_documents([corpus], tokenizer), cfg, tokenizer)


@pytest.mark.parametrize("wwm", [False, True])
@pytest.mark.parametrize("seq, pred, short", [(128, 20, 0.1), (32, 5, 0.5), (5, 1, 1.0)])
def test_instances_are_well_formed(corpus, tokenizer, wwm, seq, pred, short):
    f = features_of(
        corpus,
        tokenizer,
        do_whole_word_mask=wwm,
        max_seq_length=seq,
        max_predictions_per_seq=pred,
        short_seq_prob=short,
        dupe_factor=2,
    )
    cls, sep, mask = tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]", "[MASK]"])
    continues = np.array([t.startswith("##") for t in tokenizer.inv_vocab])
    n = len(f["input_ids"])
    assert n > 0 and all(a.shape[0] == n for a in f.values())
    assert f["input_ids"].shape == (n, seq) and f["masked_lm_ids"].shape == (n, pred)
    assert set(np.unique(f["next_sentence_labels"])) <= {0, 1}
    masked_total = kept = 0
    for i in range(n):
        ids, real = f["input_ids"][i], f["input_mask"][i].astype(bool)
        length = int(real.sum())
        assert real[:length].all() and not ids[length:].any() and not f["segment_ids"][i][length:].any()
        seg = f["segment_ids"][i][:length]
        len_a = int((seg == 0).sum()) - 2
        assert len_a >= 1 and length - len_a - 3 >= 1  # A and B at least one token each
        assert (seg == np.r_[np.zeros(len_a + 2), np.ones(length - len_a - 2)]).all()
        assert ids[0] == cls and ids[len_a + 1] == sep and ids[length - 1] == sep
        count = int(f["masked_lm_weights"][i].sum())
        positions, labels = f["masked_lm_positions"][i][:count], f["masked_lm_ids"][i][:count]
        assert (f["masked_lm_weights"][i][:count] == 1).all() and not f["masked_lm_positions"][i][count:].any()
        assert (np.diff(positions) > 0).all() and set(positions).isdisjoint({0, len_a + 1, length - 1})
        assert (positions < length).all() and not np.isin(labels, [cls, sep]).any()
        target = min(pred, max(1, round(length * 0.15)))
        # Whole-word masking skips a word that would overshoot: fewer, even none (a word split across [SEP]).
        assert (count <= target) if wwm else (count == target), (i, count, target)
        # Unmasked positions keep text tokens; a masked one holds [MASK], its own label, or a random word.
        assert not np.isin(np.delete(ids[:length], positions), [mask]).any()
        if wwm:  # a word's pieces are masked all or none; a "##" piece after [SEP] belongs to A's last word
            original = ids[:length].copy()
            original[positions] = labels
            candidates = [j for j in range(1, length - 1) if j != len_a + 1]
            for j, k in itertools.pairwise(candidates):
                if continues[original[k]]:
                    assert (j in positions) == (k in positions), (i, j, k)
        kept += int((ids[positions] == labels).sum())
        masked_total += count
    masked = f["input_ids"][np.arange(n)[:, None], f["masked_lm_positions"]][f["masked_lm_weights"] == 1]
    assert masked_total == len(masked) > 100
    assert 0.75 < (masked == mask).mean() < 0.85  # 80% [MASK], 10% kept, 10% a random word
    assert 0.06 < kept / masked_total < 0.14


def test_text_format_as_google(tmp_path, tokenizer):
    """Blank lines separate documents, a file does not end one, lines break at \\n only, empty lines vanish."""
    one, two = tmp_path / "one.txt", tmp_path / "two.txt"
    one.write_bytes("Hello world.\r\n \n\n\x00\nThe cat\u2028sat.\n".encode())
    two.write_bytes(b"It ran.\n\n\n  Bye  ")
    docs = [[list(s) for s in d] for d in P.read_documents([one, two], tokenizer)]
    enc = tokenizer.encode
    assert docs == [[enc("Hello world.")], [enc("The cat\u2028sat."), enc("It ran.")], [enc("Bye")]]


def test_words_up_to_200_characters_are_wordpieces_as_google():
    tokenizer = P.make_tokenizer(CreatePretrainingDataConfig.from_flags(input_file="in.txt", output_file="out"))
    assert "[UNK]" not in tokenizer.tokenize("a" * 200)
    assert tokenizer.tokenize("a" * 201) == ["[UNK]"]


# --- workers, output formats, the loader ----------------------------------------------------------------------


def test_workers_give_the_same_records_whatever_their_number(corpus, tmp_path):
    """Chunks made by 1 or 3 workers, or by 2 "machines" (RANK/WORLD_SIZE) into one directory: the same parts."""
    flags = {"dupe_factor": 2, "chunk_size_mb": 0.001}  # ~1 KB chunks: about 20 of them
    run_dir(corpus, tmp_path / "one", **flags)
    run_dir(corpus, tmp_path / "three", num_workers=3, **flags)
    for rank in (1, 0):
        run_dir(corpus, tmp_path / "two", num_shards=2, shard_index=rank, **flags)
    one = sorted(p.name for p in (tmp_path / "one").glob("part-*"))
    assert len(one) > 4
    for other in ("three", "two"):
        assert sorted(p.name for p in (tmp_path / other).glob("part-*")) == one
        for name in one:
            assert (tmp_path / other / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), (other, name)
    assert (tmp_path / "two" / "manifest.json").is_file()
    # Google's --output_file from two workers: the same records as from one.
    out = {w: tmp_path / f"w{w}.tfrecord" for w in (1, 2)}
    for w, path in out.items():
        create_pretraining_data(CreatePretrainingDataConfig.from_flags(input_file=str(corpus), output_file=str(path),
                                                            max_seq_length=64, num_workers=w, **flags))  # fmt: skip
    assert out[1].read_bytes() == out[2].read_bytes()


def run_dir(corpus: Path, out: Path, **flags) -> dict:
    return create_pretraining_data(
        CreatePretrainingDataConfig.from_flags(input_file=str(corpus), output_dir=str(out), max_seq_length=64, **flags)
    )


def run_format(corpus: Path, out: str, fmt: str, **flags) -> None:
    create_pretraining_data(
        CreatePretrainingDataConfig.from_flags(
            input_file=str(corpus), output_file=out, output_format=fmt, dupe_factor=3, max_seq_length=64, **flags
        )
    )


def test_output_formats_load_with_the_loader(corpus, tmp_path):
    """tfrecord, an OFRecord directory of two round-robin parts, and shards: the same instances."""
    run_format(corpus, str(tmp_path / "data.tfrecord"), "tfrecord")
    run_format(corpus, f"{tmp_path}/of/part-0,{tmp_path}/of/part-1", "ofrecord")
    run_format(corpus, str(tmp_path / "shards"), "shards")
    google = list(read_tfrecord(tmp_path / "data.tfrecord"))
    n = len(google)
    loaded = {
        src: PretrainingLoader(tmp_path / src, 8, 64, 20, shuffle=False).arrays for src in ("data.tfrecord", "of")
    }
    loaded["shards"] = PretrainingLoader(tmp_path / "shards", 8, 64, 20).arrays
    part_order = [*range(0, n, 2), *range(1, n, 2)]  # part-0 holds instances 0, 2, 4, ...; part-1 the others
    for src, order in (("data.tfrecord", range(n)), ("of", part_order), ("shards", range(n))):
        assert len(loaded[src]["input_ids"]) == n, src
        for name in FEATURES:
            want = np.stack([google[i][name] for i in order])
            np.testing.assert_array_equal(loaded[src][name], want, err_msg=f"{src} {name}")
    # No temporary files; the vocabulary and casing recorded beside the records (vocab.data_vocab finds them).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bertkit_data.json", "data.tfrecord", "of", "shards",
                                                          "vocab.txt"]  # fmt: skip
    for src in ("of", "shards", "data.tfrecord"):
        vocab, lower = data_vocab(tmp_path / src)
        assert Path(vocab).read_text() == Path(default_vocab_path()).read_text() and lower is True


def test_round_robin_output_files(corpus, tmp_path):
    run_format(corpus, str(tmp_path / "all.tfrecord"), "tfrecord")
    run_format(corpus, ",".join(str(tmp_path / f"{k}.tfrecord") for k in range(3)), "tfrecord")
    everything = list(read_tfrecord(tmp_path / "all.tfrecord"))
    for k in range(3):
        part = list(read_tfrecord(tmp_path / f"{k}.tfrecord"))
        assert len(part) == len(everything[k::3])
        assert all(np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(part, everything[k::3], strict=True))


def test_inlined_draws_equal_randoms_own():
    """The fast paths draw exactly what random.Random.shuffle / randint draw: same results, same state after."""
    for seed, n in itertools.product(range(3), (0, 1, 2, 5, 127, 4096, 4097, 10_000)):
        ours, theirs = random.Random(seed), random.Random(seed)
        x, y = list(range(n)), list(range(n))
        G._shuffle(x, ours.getrandbits)
        theirs.shuffle(y)
        assert x == y
        draws = [G._randint(a, b, ours.getrandbits) for a, b in ((0, 0), (1, 1), (2, 125), (0, 30_521), (0, n))]
        assert draws == [theirs.randint(a, b) for a, b in ((0, 0), (1, 1), (2, 125), (0, 30_521), (0, n))]
        assert ours.getstate() == theirs.getstate()


@pytest.mark.parametrize("fmt", ["tfrecord", "ofrecord"])
def test_bulk_serialization_equals_the_per_record_encoder(fmt):
    """records.serialize_rows: byte for byte serialize_example / serialize_ofrecord of each row (multi-byte
    varints, negatives, empty rows, floats, (N,) columns)."""
    from bertkit.data.records import serialize_example, serialize_ofrecord, serialize_rows

    rng = np.random.default_rng(0)
    features = {
        "input_ids": rng.integers(0, 40_000, (9, 16)).astype(np.int32),
        "big": rng.integers(-(2**40), 2**40, (9, 3)),
        "negative": rng.integers(-300, 5, (9, 4)).astype(np.int32),
        "empty": np.zeros((9, 0), np.int32),
        "masked_lm_weights": rng.random((9, 5)).astype(np.float32),
        "doubles": rng.random((9, 2)),
        "next_sentence_labels": rng.integers(0, 2, 9).astype(np.int32),
    }
    serialize = serialize_example if fmt == "tfrecord" else serialize_ofrecord
    rows = [serialize({name: a[i] for name, a in features.items()}) for i in range(9)]
    assert serialize_rows(features, fmt) == rows


def test_a_failed_write_leaves_no_file(corpus, tmp_path, monkeypatch):
    payloads = P.payloads

    def broken(instances, order, fmt):
        yield next(payloads(instances, order, fmt))
        raise OSError("disk full")

    monkeypatch.setattr(P, "payloads", broken)
    with pytest.raises(OutputError, match="cannot write .*out.tfrecord: disk full; nothing is left"):
        run_format(corpus, str(tmp_path / "out.tfrecord"), "tfrecord")
    assert list(tmp_path.iterdir()) == []


# --- bad input and flags ----------------------------------------------------------------------------------------


def test_bad_input_is_named(tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9\n".encode("latin-1"))
    out = str(tmp_path / "out.tfrecord")
    cases = [(str(blank), "blank.txt"), (f"{tmp_path}/*.nothing", r"\*\.nothing: no file"), (str(latin1), "UTF-8")]
    for pattern, message in cases:
        with pytest.raises(ValueError, match=message):
            create_pretraining_data(CreatePretrainingDataConfig.from_flags(input_file=pattern, output_file=out))
    assert not Path(out).exists()
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "x").touch()
    with pytest.raises(ValueError, match="not empty"):
        create_pretraining_data(
            CreatePretrainingDataConfig.from_flags(
                input_file=str(blank), output_file=f"{tmp_path}/shards", output_format="shards"
            )
        )


@pytest.mark.parametrize(
    "flags, flag",
    [
        ({"input_file": ""}, "--input_file"),
        ({"output_file": ""}, "--output_file"),
        ({"max_seq_length": 4}, "--max_seq_length"),
        ({"max_predictions_per_seq": 0}, "--max_predictions_per_seq"),
        ({"masked_lm_prob": 0.0}, "--masked_lm_prob"),
        ({"masked_lm_prob": 1.5}, "--masked_lm_prob"),
        ({"short_seq_prob": -0.1}, "--short_seq_prob"),
        ({"dupe_factor": 0}, "--dupe_factor"),
        ({"num_workers": 0}, "--num_workers"),
        ({"output_format": "csv"}, "--output_format"),
        ({"output_format": "shards", "output_file": "a,b"}, "--output_file"),
        ({"output_file": "a,a"}, "--output_file"),
    ],
)
def test_bad_flags_are_named(flags, flag):
    with pytest.raises(ValueError, match=flag):
        CreatePretrainingDataConfig.from_flags(**{"input_file": "in.txt", "output_file": "out", **flags})


def test_cli_takes_googles_flags(corpus, tmp_path, capsys):
    out = tmp_path / "out.tfrecord"
    argv = ["create-pretraining-data", f"--input_file={corpus}", f"--output_file={out}", "--do_whole_word_mask=True"]
    assert main([*argv, "--dupe_factor", "2", "--random_seed", "7", "--max_seq_length=64"]) == 0
    summary = capsys.readouterr().out
    assert "instances" in summary and "masked" in summary
    assert len(list(read_tfrecord(out))) > 0
    with pytest.raises(SystemExit):
        main([*argv, "--masked_lm_prob", "2"])
    assert "--masked_lm_prob" in capsys.readouterr().err


def test_a_cased_vocabulary_is_not_lowercased(corpus, tmp_path, shared_data):
    cased = str(shared_data / "vocab" / "bert-base-cased-vocab.txt")
    flags = dict(input_file=str(corpus), output_file=str(tmp_path / "x"), output_format="shards", vocab_file=cased)
    with pytest.raises(ValueError, match="--do_lower_case True with a cased model"):  # refused as the flags parse
        CreatePretrainingDataConfig.from_flags(**flags, do_lower_case=True)
    assert list(tmp_path.iterdir()) == []
    cfg = CreatePretrainingDataConfig.from_flags(
        **flags
    )  # not given: the vocabulary's casing (data/vocab.choose_tokenizer)
    assert cfg.tokenizer.do_lower_case is False
    create_pretraining_data(cfg)
    assert data_vocab(tmp_path / "x")[1] is False
