"""Which vocabulary and casing a model or a data set was made with, and the checks that they match.

A WordPiece vocabulary tells its casing: an uncased model lowercases its text before WordPiece, so none of its
word pieces holds a capital letter, while a cased vocabulary has thousands (bert-base-cased: "The", "##A", ...).
Google's run_squad.py (tokenization.validate_case_matches_checkpoint) looks only at the checkpoint's directory
name; that is the fallback here, mind that "uncased" contains "cased".

create-pretraining-data writes `bertkit_data.json` (vocabulary size, sha256, casing) and a copy of `vocab.txt`
beside its records, so that pretraining can carry them into its snapshots (`data_vocab`), and a snapshot carries
them into fine-tuning and prediction.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from bertkit.runtime.atomic import atomic_output

DATA_META, VOCAB, TOKENIZER_CONFIG = "bertkit_data.json", "vocab.txt", "tokenizer_config.json"
MIN_PIECES = 1000  # a vocabulary with fewer alphabetic pieces and no capital is too small to call uncased


def default_vocab_path() -> str:
    """bert-base-uncased's vocab.txt, shipped in the package (what the tokenizer uses without --vocab_file)."""
    from importlib import resources

    from bertkit.data.tokenizer import DEFAULT_VOCAB

    return str(resources.files("bertkit").joinpath(DEFAULT_VOCAB))


def read_vocab(path: str | os.PathLike) -> list[str]:
    """The tokens of a vocab.txt, one per line, in order (ValueError naming the file when unreadable)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path}: vocabulary file not found") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a vocabulary: not UTF-8 text (byte {e.start})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


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


def check_casing(
    do_lower_case: bool,
    vocab_file: str | os.PathLike | None,
    names: tuple[str | os.PathLike | None, ...] = (),
    recorded: bool | None = None,
    flag: str = "--do_lower_case",
) -> None:
    """ValueError when `do_lower_case` contradicts the model: the casing the checkpoint or data recorded, else its
    vocabulary's pieces, else the word cased/uncased in a checkpoint or vocabulary path. Silent when none tells.

    The message says which way it is and how to proceed (the flag's other value, or `--check_casing False` to
    keep the flag as given).
    """
    evidence = None
    if recorded is not None:
        cased, evidence = not recorded, f"it was trained with {flag} {recorded}"
    else:
        cased = None
        if vocab_file is not None:
            cased, why = casing_of(read_vocab(vocab_file))
            evidence = f"its vocabulary {vocab_file} is {'cased' if cased else 'uncased'}: {why}"
        for name in (n for n in (*names, vocab_file) if n is not None and cased is None):
            cased = casing_from_name(name)
            evidence = f"its name {name} says {'cased' if cased else 'uncased'}"
    if cased is None or cased != do_lower_case:
        return
    kind = "a cased" if cased else "an uncased"
    raise ValueError(
        f"{flag} {do_lower_case} with {kind} model ({evidence}): {'lowercasing' if do_lower_case else 'keeping the case'}"
        f" would give it text unlike its training. Pass {flag} {not do_lower_case}, or --check_casing False to keep "
        f"{flag} {do_lower_case}"
    )


def check_vocab(vocab_file: str | os.PathLike, checkpoint_vocab: str | os.PathLike | None, vocab_size: int) -> str:
    """Before any work: a --vocab_file that differs from the checkpoint's own vocab.txt, or has more entries than
    the model's vocab_size (ids past the embedding), is a ValueError; fewer entries is a warning line (returned;
    "" when all is well): those embedding rows are never used."""
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
    if len(mine) > vocab_size:
        raise ValueError(
            f"--vocab_file {vocab_file} has {len(mine):,} tokens, more than the model's vocab_size {vocab_size:,}: "
            f"ids from {vocab_size:,} on have no embedding. Use the model's own vocabulary"
        )
    if len(mine) < vocab_size:
        return (f"warning: --vocab_file {vocab_file} has {len(mine):,} tokens, the model's vocab_size is "
                f"{vocab_size:,}: {vocab_size - len(mine):,} embedding rows are never used")  # fmt: skip
    return ""


def recorded_casing(d: Path) -> bool | None:
    """do_lower_case from a checkpoint directory's tokenizer_config.json (bertkit snapshots and Hugging Face
    directories write it); None when absent or unreadable."""
    try:
        value = json.loads((Path(d) / TOKENIZER_CONFIG).read_text(encoding="utf-8")).get("do_lower_case")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, bool) else None


def choose_tokenizer(
    vocab_file: str | None,
    do_lower_case: bool | None,
    checkpoint: str | os.PathLike | None = None,
    vocab_size: int | None = None,
    check: bool = True,
) -> tuple[str | None, bool, str]:
    """The one vocabulary and casing policy: (vocab.txt or None for bert-base-uncased's, do_lower_case, a warning
    or ""), decided before any work.

    The vocabulary: `vocab_file` (--vocab_file), else the checkpoint's own vocab.txt. The casing: `do_lower_case`
    when given, else the checkpoint's recorded casing (tokenizer_config.json), else its vocabulary's capitals, else
    cased/uncased in its name, else True. ValueError when --vocab_file differs from the checkpoint's vocab.txt or
    outgrows vocab_size, and (with `check`, i.e. not --check_casing False) when --do_lower_case contradicts the
    model (`check_casing`).
    """
    own_vocab = own_lower = None
    if checkpoint:
        d = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
        own_vocab = str(d / VOCAB) if (d / VOCAB).is_file() else None
        own_lower = recorded_casing(d)
    vocab = vocab_file or own_vocab
    note = check_vocab(vocab_file, own_vocab, vocab_size) if vocab_file and vocab_size else ""
    if do_lower_case is not None:
        if check:
            check_casing(do_lower_case, vocab or default_vocab_path(), (checkpoint,), own_lower)
        return vocab, do_lower_case, note
    if own_lower is not None:
        return vocab, own_lower, note
    cased = casing_of(read_vocab(vocab))[0] if vocab else None
    cased = casing_from_name(checkpoint) if cased is None and checkpoint else cased
    return vocab, not cased, note


# --- what data was made with ----------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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


def data_vocab(data_dir: str | os.PathLike | None) -> tuple[str | None, bool | None]:
    """(vocab.txt, do_lower_case) recorded beside pretraining data: in a data or shard directory, or beside the
    record file(s) a path or glob names; (None, None) when nothing was recorded."""
    if not data_dir:
        return None, None
    first = str(data_dir).split(",")[0]
    p = Path(first)
    d = p if p.is_dir() else p.parent
    meta = d / DATA_META
    if not meta.is_file():
        return None, None
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ValueError(f"{meta}: not valid JSON; remove it or write the data again") from None
    vocab = d / str(info.get("vocab_file", VOCAB))
    lower = info.get("do_lower_case")
    return (str(vocab) if vocab.is_file() else None), (lower if isinstance(lower, bool) else None)


def pretrain_vocab(
    vocab_file: str | None, data_dir: str | None, vocab_size: int
) -> tuple[str | None, bool | None, str]:
    """(vocab.txt, do_lower_case, a warning or "") for `bertkit pretrain` to carry into its snapshots.

    --vocab_file wins, but must be the vocabulary the data was made with when the data recorded one (ValueError:
    token ids would not match); without it, the data's recorded vocabulary. More tokens than --vocab_size is a
    ValueError; no vocabulary known at all is a warning (the snapshots then carry none, and fine-tuning needs
    --vocab_file).
    """
    recorded, lower = data_vocab(data_dir)
    if vocab_file and recorded and _sha256(Path(vocab_file)) != _sha256(Path(recorded)):
        raise ValueError(
            f"--vocab_file {vocab_file} is not the vocabulary --data_dir {data_dir} was made with ({recorded}): the "
            f"records' token ids would be read with other tokens. Leave out --vocab_file, or make the data again"
        )
    vocab = vocab_file or recorded
    if vocab is None:
        return None, None, (f"warning: no vocabulary is known for --data_dir {data_dir} (made by another tool, or "
                            f"before bertkit recorded it): the snapshots will carry none; pass --vocab_file")  # fmt: skip
    n = len(read_vocab(vocab))
    if n > vocab_size:
        raise ValueError(f"{vocab} has {n:,} tokens, more than --vocab_size {vocab_size:,}: pass --vocab_size {n}")
    if lower is None:
        cased = casing_of(read_vocab(vocab))[0]
        lower = None if cased is None else not cased
    return str(vocab), lower, ""
