"""The one vocabulary and casing policy: which vocab.txt and which casing a command tokenizes with, and the checks
that they are the model's and the data's.

Every command that tokenizes or carries a vocabulary (pretrain, squad, squad-predict, npy2json, classify, ask,
serve, create-pretraining-data, create-glue-data) calls `choose_tokenizer` once, before any work, and prints its
decision (`Tokenization.line`): which vocab.txt, lowercase or not, and why.

The vocabulary: --vocab_file, else the checkpoint's own vocab.txt (`checkpoint_vocab`: the one place that finds
it), else the one the data recorded, else bert-base-uncased's (bertkit ships it). The casing: --do_lower_case when
given, checked against the model (a contradiction is one ValueError line, unless --check_casing False); else what
the checkpoint or the data recorded (tokenizer_config.json, bertkit_data.json), else the vocabulary's capitals, else
the word cased/uncased in the checkpoint's or vocabulary's name, else True.

A WordPiece vocabulary tells its casing: an uncased model lowercases its text before WordPiece, so none of its
word pieces holds a capital letter, while a cased vocabulary has thousands (bert-base-cased: "The", "##A", ...).
Google's run_squad.py (tokenization.validate_case_matches_checkpoint) looks only at the checkpoint's directory
name; that is the last resort here, mind that "uncased" contains "cased".

The vocabulary itself is guarded: duplicate tokens and merged lines (a token that Google's basic tokenizer can
never produce: whitespace or control characters inside, punctuation glued to letters, as a damaged newline makes)
are refused; so is a vocabulary other than the checkpoint's or than the one the data was made with (compared token
by token; the data's copy against the sha256 recorded beside it), and one with more entries than the model's
vocab_size. Fewer entries is a warning: those embedding rows are never used.

create-pretraining-data and create-glue-data write `bertkit_data.json` (vocabulary size, sha256, casing) and a copy
of `vocab.txt` beside their records (`record_data_vocab`); training reads them (`data_vocab`) and carries them into
its snapshots, and a snapshot carries them into fine-tuning and prediction.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from bertkit.runtime.atomic import atomic_output
from bertkit.runtime.config import Section

DATA_META, VOCAB, TOKENIZER_CONFIG = "bertkit_data.json", "vocab.txt", "tokenizer_config.json"
MIN_PIECES = 1000  # a vocabulary with fewer alphabetic pieces and no capital is too small to call uncased
CHECK_CASING_HELP = ("stop when --do_lower_case contradicts the model or the data (their recorded casing, the "
                     "vocabulary's capitals, or cased/uncased in a name); False: use the flag as given")  # fmt: skip
DO_LOWER_CASE_HELP = ("lowercase and strip accents: True for uncased models (default: the checkpoint's or the "
                      "data's recorded casing, else what the vocabulary shows, else True)")  # fmt: skip


def default_vocab_path() -> str:
    """bert-base-uncased's vocab.txt, shipped in the package (what the tokenizer uses without --vocab_file)."""
    from importlib import resources

    from bertkit.data.tokenizer import DEFAULT_VOCAB

    return str(resources.files("bertkit").joinpath(DEFAULT_VOCAB))


def checkpoint_dir(checkpoint: str | os.PathLike) -> Path:
    """Where a checkpoint's config and vocabulary live: the directory itself, or a TF prefix's directory."""
    p = Path(checkpoint)
    return p if p.is_dir() else p.parent


def checkpoint_vocab(checkpoint: str | os.PathLike | None) -> str | None:
    """The vocab.txt a checkpoint (any format: a directory, or a TF checkpoint prefix) carries, or None. The one
    place bertkit looks for it."""
    if not checkpoint:
        return None
    vocab = checkpoint_dir(checkpoint) / VOCAB
    return str(vocab) if vocab.is_file() else None


def recorded_casing(d: str | os.PathLike) -> bool | None:
    """do_lower_case from a checkpoint directory's tokenizer_config.json (bertkit snapshots and Hugging Face
    directories write it); None when absent or unreadable."""
    try:
        value = json.loads((Path(d) / TOKENIZER_CONFIG).read_text(encoding="utf-8")).get("do_lower_case")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, bool) else None


# --- the vocabulary itself ------------------------------------------------------------------------------------


def _merged(token: str) -> bool:
    """True for a token Google's basic tokenizer can never produce, as two lines merged by a damaged newline are:
    whitespace or a control character inside, or punctuation beside letters or digits ("the*of")."""
    if token.startswith("[") and token.endswith("]"):  # [CLS], [unused12]: special tokens, never produced by text
        return False
    piece = token[2:] if token.startswith("##") and len(token) > 2 else token
    if any(c.isspace() or unicodedata.category(c)[0] == "C" for c in piece):
        return True
    punct = [unicodedata.category(c)[0] == "P" or c in "$+<=>^`|~" for c in piece]
    return any(punct) and not all(punct)  # "..." is a token of Google's vocabularies; "a.b" is not


def read_vocab(path: str | os.PathLike) -> list[str]:
    """The tokens of a vocab.txt in id order, read as the tokenizer reads them (one per "\\n" line, stripped).

    ValueError naming the file and line: unreadable, not UTF-8, empty, a duplicate token, a special token missing
    ([PAD] [UNK] [CLS] [SEP] [MASK]), or two lines merged into one token (see `_merged`).
    """
    from bertkit.data.tokenizer import load_vocab

    ids = load_vocab(path)
    tokens = sorted(ids, key=ids.__getitem__)
    for token in tokens:
        if _merged(token):
            raise ValueError(
                f"{path}, line {ids[token] + 1}: {token!r} cannot be a WordPiece token (whitespace, a control "
                f"character or punctuation inside a word): two lines merged? Every later id would be off by one; "
                f"restore the vocabulary the model was trained with"
            )
    return tokens


def casing_of(tokens: list[str]) -> tuple[bool | None, str]:
    """(True: cased, False: uncased, None: cannot tell; the evidence, for a message)."""
    pieces = [t.removeprefix("##") for t in tokens if not (t.startswith("[") and t.endswith("]"))]
    alpha = [p for p in pieces if any(c.isalpha() for c in p)]
    upper = [p for p in alpha if p != p.lower()]  # what lowercasing changes (uncased vocabularies keep "ℝ")
    if upper:
        return True, f"{len(upper):,} of its {len(alpha):,} word pieces have capitals, e.g. {upper[0]!r}"
    if len(alpha) >= MIN_PIECES:
        return False, f"none of its {len(alpha):,} word pieces has a capital"
    return None, f"{len(alpha)} word pieces, none with a capital: too few to tell"


def casing_from_name(path: str | os.PathLike) -> bool | None:
    """Cased / uncased from a checkpoint's or vocabulary's path (`cased_L-12_H-768_A-12`, `bert-base-uncased`)."""
    for part in reversed(Path(path).absolute().parts):
        words = re.split(r"[^a-z]+", part.lower())
        if "uncased" in words:
            return False
        if "cased" in words:
            return True
    return None


def _casing_evidence(
    tokens: list[str] | None, vocab_file: str | os.PathLike | None, names: tuple, recorded: tuple[bool, str] | None
) -> tuple[bool | None, str]:
    """(cased: True / False / None when nothing tells, the evidence): the recorded casing (do_lower_case, where it
    was recorded), else the vocabulary's capitals, else cased/uncased in a checkpoint's or the vocabulary's path."""
    if recorded is not None:
        return not recorded[0], recorded[1]
    cased, evidence = None, None
    if tokens is not None:
        cased, why = casing_of(tokens)
        which = vocab_file if vocab_file is not None else "(bert-base-uncased's, shipped with bertkit)"
        evidence = f"its vocabulary {which} is {'cased' if cased else 'uncased'}: {why}"
    for name in (n for n in (*names, vocab_file) if n is not None and cased is None):
        cased = casing_from_name(name)
        evidence = f"its name {name} says {'cased' if cased else 'uncased'}"
    return cased, evidence or "nothing tells"


def _refuse_casing(do_lower_case: bool, cased: bool, evidence: str, flag: str) -> None:
    kind = "a cased" if cased else "an uncased"
    raise ValueError(
        f"{flag} {do_lower_case} with {kind} model ({evidence}): {'lowercasing' if do_lower_case else 'keeping the case'}"
        f" would give it text unlike its training. Pass {flag} {not do_lower_case}, or --check_casing False to keep "
        f"{flag} {do_lower_case}"
    )


def check_casing(
    do_lower_case: bool,
    vocab_file: str | os.PathLike | None,
    names: tuple[str | os.PathLike | None, ...] = (),
    recorded: bool | None = None,
    flag: str = "--do_lower_case",
) -> None:
    """ValueError when `do_lower_case` contradicts the model: the casing it recorded, else its vocabulary's pieces,
    else the word cased/uncased in a checkpoint or vocabulary path. Silent when none tells.

    The message says which way it is and how to proceed (the flag's other value, or `--check_casing False` to
    keep the flag as given).
    """
    tokens = read_vocab(vocab_file) if vocab_file is not None else None
    was = None if recorded is None else (recorded, f"it was trained with {flag} {recorded}")
    cased, evidence = _casing_evidence(tokens, vocab_file, names, was)
    if cased is not None and cased == do_lower_case:
        _refuse_casing(do_lower_case, cased, evidence, flag)


def check_vocab(
    vocab_file: str | os.PathLike, checkpoint_vocab: str | os.PathLike | None, vocab_size: int | None
) -> str:
    """A --vocab_file that differs from the checkpoint's own vocab.txt, or has more entries than the model's
    vocab_size (ids past the embedding), is a ValueError; fewer entries is a warning line (returned; "" when all
    is well): those embedding rows are never used."""
    mine = read_vocab(vocab_file)
    if checkpoint_vocab is not None and Path(checkpoint_vocab).resolve() != Path(vocab_file).resolve():
        theirs = read_vocab(checkpoint_vocab)
        if mine != theirs:
            at = next(
                (i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b), min(len(mine), len(theirs))
            )
            first = f"line {at + 1}: {mine[at]!r} against {theirs[at]!r}" if at < min(len(mine), len(theirs)) else (
                f"one ends at line {at}")  # fmt: skip
            raise ValueError(
                f"--vocab_file {vocab_file} ({len(mine):,} tokens) differs from the checkpoint's own "
                f"{checkpoint_vocab} ({len(theirs):,} tokens; first difference at {first}): token ids would not "
                f"mean what the model learned. Leave out --vocab_file to use the checkpoint's"
            )
    return _size_note(vocab_file, len(mine), vocab_size)


def _size_note(vocab_file: str | os.PathLike, n: int, vocab_size: int | None) -> str:
    if vocab_size is None or n == vocab_size:
        return ""
    if n > vocab_size:
        raise ValueError(
            f"{vocab_file} has {n:,} tokens, more than the model's vocab_size {vocab_size:,}: ids from "
            f"{vocab_size:,} on have no embedding. Use the model's own vocabulary, or a model of vocab_size {n}"
        )
    return (f"warning: {vocab_file} has {n:,} tokens, the model's vocab_size is {vocab_size:,}: "
            f"{vocab_size - n:,} embedding rows are never used")  # fmt: skip


class Tokenization(NamedTuple):
    """What `choose_tokenizer` decided."""

    vocab_file: str | None  # None: bert-base-uncased's, shipped with bertkit (or, with fallback=False, none known)
    do_lower_case: bool | None  # None only when choose_tokenizer(fallback=False) knows no vocabulary
    note: str  # a warning line, or ""
    reason: str  # where the vocabulary and the casing came from

    @property
    def path(self) -> str:
        """The vocab.txt to read (the shipped one for None)."""
        return self.vocab_file or default_vocab_path()

    def line(self) -> str:
        """The decision, one line for the log."""
        vocab = self.vocab_file or "bert-base-uncased's (shipped with bertkit)"
        return f"tokenizer: vocabulary {vocab}, do_lower_case {self.do_lower_case} ({self.reason})"


def choose_tokenizer(
    vocab_file: str | os.PathLike | None,
    do_lower_case: bool | None,
    checkpoint: str | os.PathLike | None = None,
    vocab_size: int | None = None,
    check: bool = True,
    data: tuple[tuple[str, str | None], ...] = (),
    fallback: bool = True,
) -> Tokenization:
    """The one vocabulary and casing policy (see the module docstring), decided before any work.

    `checkpoint`: the model's checkpoint (directory or TF prefix), whose vocab.txt and tokenizer_config.json
    count; `vocab_size`: the model's; `check`: False for --check_casing False; `data`: (flag, path) of the record
    data the command reads, whose recorded vocabulary (bertkit_data.json) must be the model's; `fallback`: False
    to return vocab_file None (and a warning) instead of bert-base-uncased's when nothing names a vocabulary.
    Raises ValueError (one line) for every refusal the module docstring lists.
    """
    vocab_file = None if vocab_file is None else str(vocab_file)
    own_vocab = checkpoint_vocab(checkpoint)
    own_lower = recorded_casing(checkpoint_dir(checkpoint)) if checkpoint else None
    records = [(flag, path, data_record(path)) for flag, path in data if path]
    records = [(flag, path, rec) for flag, path, rec in records if rec is not None]
    made = next(((flag, path, rec) for flag, path, rec in records if rec.vocab_file), None)
    if vocab_file:
        vocab, source = vocab_file, "--vocab_file"
    elif own_vocab:
        vocab, source = own_vocab, "the checkpoint's"
    elif made:
        vocab, source = made[2].vocab_file, f"the one {made[0]} was made with"
    elif not fallback:
        return Tokenization(None, None, "warning: no vocabulary is known (no --vocab_file, and the data and "
                            "checkpoint record none): snapshots will carry none; pass --vocab_file", "none known")  # fmt: skip
    else:
        vocab, source = None, "nothing names another"
    path = vocab or default_vocab_path()
    tokens = read_vocab(path)
    note = check_vocab(vocab_file, own_vocab, vocab_size) if vocab_file else _size_note(path, len(tokens), vocab_size)
    for flag, where, rec in records:  # the data's token ids must mean the model's tokens
        if rec.vocab_file:
            same = read_vocab(rec.vocab_file) == tokens
        else:
            same = rec.vocab_sha256 is None or _sha256(Path(path)) == rec.vocab_sha256
        if not same:
            what = f"--vocab_file {vocab_file}" if vocab_file else f"the model's vocabulary {path} ({source})"
            raise ValueError(
                f"{what} is not the vocabulary {flag} {where} was made with ({rec.vocab_file or rec.meta}): the "
                f"records' token ids would be read as other tokens. Use the data's model and vocabulary, or make "
                f"the data again with {path}"
            )
    recorded = None
    if own_lower is not None:
        recorded = (own_lower, f"it was trained with --do_lower_case {own_lower}")
    for flag, where, rec in records:
        if rec.do_lower_case is None:
            continue
        if recorded is not None and rec.do_lower_case != recorded[0]:
            raise ValueError(f"{flag} {where} was made with do_lower_case {rec.do_lower_case}, but {recorded[1]}: "
                             f"make the data again with --do_lower_case {recorded[0]}")  # fmt: skip
        recorded = recorded or (rec.do_lower_case, f"{flag} {where} was made with --do_lower_case {rec.do_lower_case}")
    names = (checkpoint,) if checkpoint else ()
    cased, evidence = _casing_evidence(tokens, path if vocab else None, names, recorded)
    if cased is None and vocab is None:
        cased, evidence = False, "bert-base-uncased is uncased"
    if do_lower_case is None:
        lower = True if cased is None else not cased
        why = "no casing recorded or shown: True by default" if cased is None else evidence
    else:
        lower = do_lower_case
        if cased is not None and cased == do_lower_case:
            if check:
                _refuse_casing(do_lower_case, cased, evidence, "--do_lower_case")
            why = f"as given, with --check_casing False, against the model: {evidence}"
        else:
            why = "as given" + (f"; it agrees: {evidence}" if cased is not None else "")
    return Tokenization(vocab, lower, note, f"vocabulary {source}; casing: {why}")


@dataclass(frozen=True)
class TokenizerFlags(Section):
    """The vocabulary and casing the text is tokenized with: the checkpoint's by default, checked against the
    model and the data.

    The tokenizer section of every command that tokenizes (squad, squad-predict, npy2json, classify, ask, serve,
    create-squad-data, create-glue-data, create-pretraining-data): its flags, declared once."""

    vocab_file: str | None = field(
        default=None,
        metadata={"resume": "warned", "help": "vocab.txt of the model (default: the checkpoint's, else bert-base-uncased)"},
    )  # fmt: skip
    do_lower_case: bool | None = field(default=None, metadata={"resume": "refused", "help": DO_LOWER_CASE_HELP})
    check_casing: bool = field(default=True, metadata={"help": CHECK_CASING_HELP})

    def choose(
        self, checkpoint: str | os.PathLike | None = None, vocab_size: int | None = None, data: tuple = ()
    ) -> Tokenization:
        """`choose_tokenizer` with these flags (ValueError, before any work, for what it refuses)."""
        return choose_tokenizer(self.vocab_file, self.do_lower_case, checkpoint, vocab_size, self.check_casing, data)


# --- what data was made with ----------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class DataRecord(NamedTuple):
    """What bertkit_data.json beside record data says: its vocab.txt (verified), sha256 and casing."""

    meta: str
    vocab_file: str | None
    vocab_sha256: str | None
    do_lower_case: bool | None


def data_record(data_dir: str | os.PathLike | None) -> DataRecord | None:
    """The bertkit_data.json of a data or shard directory, or beside the record file(s) a path or glob names (the
    first of a comma-separated list); None when there is none. ValueError when it is damaged, or when the vocab.txt
    beside it no longer has the sha256 it recorded (changed after the data was made: every id after a damaged line
    would be read as another token)."""
    if not data_dir:
        return None
    p = Path(str(data_dir).split(",")[0])
    d = p if p.is_dir() else p.parent
    meta = d / DATA_META
    if not meta.is_file():
        return None
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        name, sha, lower = str(info.get("vocab_file", VOCAB)), info.get("vocab_sha256"), info.get("do_lower_case")
    except (OSError, ValueError, AttributeError):
        raise ValueError(f"{meta}: not valid JSON; remove it or write the data again") from None
    vocab = d / name
    sha = sha if isinstance(sha, str) else None
    if vocab.is_file() and sha and _sha256(vocab) != sha:
        raise ValueError(
            f"{vocab}: its sha256 is not the vocab_sha256 {meta} recorded when the data was made: the file changed "
            f"since. Restore it (the vocabulary the data was made with), or make the data again"
        )
    return DataRecord(
        str(meta), str(vocab) if vocab.is_file() else None, sha, lower if isinstance(lower, bool) else None
    )


def data_vocab(data_dir: str | os.PathLike | None) -> tuple[str | None, bool | None]:
    """(vocab.txt, do_lower_case) recorded beside data (`data_record`); (None, None) when nothing was recorded."""
    rec = data_record(data_dir)
    return (None, None) if rec is None else (rec.vocab_file, rec.do_lower_case)


def record_data_vocab(out_dir: str | os.PathLike, vocab_file: str | os.PathLike, do_lower_case: bool) -> None:
    """Write `vocab.txt` (a copy) and `bertkit_data.json` into out_dir, beside records made with this vocabulary.

    An out_dir that holds another vocab.txt is a ValueError before anything is written there (call it before the
    work, see `check_data_vocab_target`), so a user's own file is never replaced.
    """
    out, src = Path(out_dir), Path(vocab_file)
    check_data_vocab_target(out, src)
    if not (out / VOCAB).exists():
        with atomic_output(out / VOCAB) as tmp:
            shutil.copyfile(src, tmp)
    meta = {"vocab_file": VOCAB, "vocab_size": len(read_vocab(src)), "vocab_sha256": _sha256(src),
            "do_lower_case": bool(do_lower_case)}  # fmt: skip
    with atomic_output(out / DATA_META) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def check_data_vocab_target(out_dir: Path, vocab_file: Path) -> None:
    """ValueError when out_dir already holds a vocab.txt other than `vocab_file`'s contents."""
    there = Path(out_dir) / VOCAB
    if there.is_file() and _sha256(there) != _sha256(Path(vocab_file)):
        raise ValueError(
            f"{there} exists and differs from the vocabulary used ({vocab_file}); bertkit keeps the data's "
            f"vocabulary there: write the records to another directory, or remove it"
        )
