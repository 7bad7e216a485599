"""Reading a pretraining corpus as a stream of chunks of documents, in bounded memory.

Inputs (`--input_file`: comma-separated paths or globs, each glob's matches sorted):
- text in Google's format (one sentence per line, a blank line between documents), plain or compressed
  (`.gz`, `.bz2`, `.zst`; `.zst` needs `pip install 'bertkit[corpus]'`);
- JSON lines (`.jsonl`, `.ndjson`, `.json`, compressed too): one document per line, its text in `--text_field`;
- Parquet (`.parquet`, Hugging Face `datasets` exports such as Wikipedia): one document per row, `--text_field`.
JSON lines and Parquet documents are cut into paragraphs at newlines and into sentences by blingfire (see
docs/corpus.md for why that splitter), so they become Google's format: sentences on lines, a blank line after
each document.

Lines are read as bytes and split at b"\\n" alone (as tf.gfile reads; a "\\r" stays and `strip` removes it), then
decoded, so an error names the file and line (or row). A file does not end a document (Google's reader).

Chunks: documents are gathered until they hold `chunk_size_mb` MiB of text (UTF-8 bytes), then a chunk is cut at
the next blank line (a document boundary). A document longer than twice the chunk size is cut at a line, its
rest starting the next chunk. The cut depends on the text and `chunk_size_mb` alone, so every process that reads
the same inputs sees the same chunks with the same indices (0, 1, 2, ...) and can take its own without talking to
the others.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import io
import json
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

COMPRESSED = (".gz", ".bz2", ".zst")
JSON_LINES = (".jsonl", ".ndjson", ".json")
EXTRA = "pip install 'bertkit[corpus]'"


class Chunk(NamedTuple):
    """One chunk of documents: Google's format lines (not stripped), their UTF-8 size, where it starts."""

    index: int
    lines: list[str]
    nbytes: int
    start: str  # "<file>: line <n>" (or row) of its first line, for messages


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


def kind_of(path: Path) -> tuple[str, str]:
    """(kind, compression) of an input by its name: kind text, jsonl or parquet; compression '' or a suffix."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in COMPRESSED else ""
    last = suffixes[-1] if suffixes else ""
    kind = "jsonl" if last in JSON_LINES else "parquet" if last == ".parquet" else "text"
    if kind == "parquet" and compression:
        raise ValueError(f"--input_file {path}: Parquet compresses itself; name the .parquet file")
    return kind, compression


def _need(module: str, what: str):
    try:
        return __import__(module)
    except ImportError:
        raise ValueError(f"reading {what} needs the '{module}' package: {EXTRA}") from None


def _open_binary(path: Path, compression: str) -> io.BufferedIOBase:
    if compression == ".gz":
        return gzip.open(path, "rb")
    if compression == ".bz2":
        return bz2.open(path, "rb")
    if compression == ".zst":
        zstandard = _need("zstandard", f"{path} (.zst)")
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))  # noqa: SIM115
    return open(path, "rb")  # noqa: SIM115 - closed by the caller


def _split(text: str, splitter) -> list[str]:
    """A document's text -> Google's lines: its paragraphs' sentences, then a blank line."""
    out = []
    for paragraph in text.split("\n"):
        if paragraph.strip():
            out += splitter(paragraph)
    out.append("")
    return out


def sentence_splitter():
    """blingfire's text_to_sentences as a function str -> [sentence]; ValueError naming the extra without it."""
    blingfire = _need("blingfire", "JSON lines or Parquet documents (sentences are split by blingfire)")
    return lambda paragraph: [s for s in blingfire.text_to_sentences(paragraph).split("\n") if s.strip()]


def _document_text(value, path: Path, row: int, text_field: str) -> str:
    if not isinstance(value, str):
        kind = "missing" if value is None else f"a {type(value).__name__}, not text"
        raise ValueError(f"--input_file {path}: row {row}: field '{text_field}' is {kind} (see --text_field)")
    return value


def _text_lines(path: Path, compression: str) -> Iterator[tuple[str, int, str]]:
    with _open_binary(path, compression) as fh:
        for n, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"--input_file {path}: line {n}: not UTF-8 text ({e.reason})") from None
            yield line, len(raw), f"line {n}"


def _jsonl_lines(path: Path, compression: str, text_field: str, splitter) -> Iterator[tuple[str, int, str]]:
    with _open_binary(path, compression) as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                doc = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"--input_file {path}: line {n}: not a JSON object ({e})") from None
            if not isinstance(doc, dict):
                raise ValueError(f"--input_file {path}: line {n}: not a JSON object")
            text = _document_text(doc.get(text_field), path, n, text_field)
            for line in _split(text, splitter):
                yield line, len(line.encode("utf-8")) + 1, f"line {n}"


def _parquet_lines(path: Path, text_field: str, splitter) -> Iterator[tuple[str, int, str]]:
    pq = _need("pyarrow", f"{path} (Parquet)")
    import pyarrow.parquet as pq  # noqa: F811 - the submodule, once the package is known present

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow's own error types: not a Parquet file, truncated, ...
        raise ValueError(f"--input_file {path}: not a Parquet file ({e})") from None
    if text_field not in pf.schema_arrow.names:
        have = ", ".join(pf.schema_arrow.names)
        raise ValueError(f"--input_file {path}: no column '{text_field}' (it has {have}); pass --text_field")
    row = 0
    for batch in pf.iter_batches(batch_size=1024, columns=[text_field]):
        for value in batch.column(0).to_pylist():
            row += 1
            for line in _split(_document_text(value, path, row, text_field), splitter):
                yield line, len(line.encode("utf-8")) + 1, f"row {row}"


def read_lines(files: list[Path], text_field: str = "text") -> Iterator[tuple[str, int, str]]:
    """(line, its UTF-8 bytes, where) of every input in order, all kinds as Google's format lines."""
    splitter = None
    for path in files:
        kind, compression = kind_of(path)
        if kind != "text" and splitter is None:
            splitter = sentence_splitter()
        try:
            if kind == "text":
                lines = _text_lines(path, compression)
            elif kind == "jsonl":
                lines = _jsonl_lines(path, compression, text_field, splitter)
            else:
                lines = _parquet_lines(path, text_field, splitter)
            for line, nbytes, where in lines:
                yield line, nbytes, f"{path}: {where}"
        except (OSError, EOFError) as e:  # a missing file, a truncated or damaged .gz / .bz2 / .zst
            raise ValueError(f"--input_file {path}: cannot read ({getattr(e, 'strerror', None) or e})") from None


def read_chunks(files: list[Path], chunk_size_mb: float, text_field: str = "text") -> Iterator[Chunk]:
    """The inputs as chunks of whole documents of about `chunk_size_mb` MiB each (see the module docstring);
    `chunk_size_mb` 0: one chunk holding everything (Google's run over these files)."""
    limit = int(chunk_size_mb * 2**20) if chunk_size_mb > 0 else float("inf")
    index, lines, nbytes, start = 0, [], 0, ""
    for line, size, where in read_lines(files, text_field):
        if nbytes >= limit and (not line.strip() or nbytes >= 2 * limit):
            yield Chunk(index, lines, nbytes, start)
            index, lines, nbytes = index + 1, [], 0
        if not lines:
            start = where
        lines.append(line)
        nbytes += size
    if lines or index == 0:
        yield Chunk(index, lines, nbytes, start)


LINES_PER_BATCH = 4096  # lines tokenized per Rust call


def tokenize_documents(lines: list[str], tokenizer) -> list[list[array]]:
    """Google's reader over `lines`: each line `str.strip`ped; a blank line starts a new document, a line that
    tokenizes to nothing is dropped; empty documents removed. Documents -> sentences -> array('i') of token ids."""
    documents: list[list[array]] = [[]]
    for lo in range(0, len(lines), LINES_PER_BATCH):
        stripped = [line.strip() for line in lines[lo : lo + LINES_PER_BATCH]]
        encoded = iter(tokenizer.encode_batch([line for line in stripped if line]))
        for line in stripped:
            if not line:
                documents.append([])
            elif ids := next(encoded):
                documents[-1].append(array("i", ids))
    return [d for d in documents if d]
