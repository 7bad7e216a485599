"""`bertkit create-pretraining-data`: raw text -> masked-LM and next-sentence pretraining records, streamed.

Reference: google-research/bert @ eedf571 `create_pretraining_data.py`, whose flags and defaults this keeps, and
its README's advice for a large corpus: cut the input into files and run the script on each (next-sentence
negatives are then drawn from within a file). Here the corpus is read as a stream of chunks of whole documents of
`--chunk_size_mb` MiB (`corpus.py`); each chunk is made exactly as Google's script makes one input file, with
random.Random(`parts.chunk_seed(seed, chunk)`), and its records are written as soon as it is made, so memory is
bounded by a chunk, not by the corpus. Google's order of draws, per chunk:

1. Documents: the lines in order, split at "\\n" only (as tf.gfile reads) and `str.strip`ped; a blank line starts
   a new document, a line that tokenizes to nothing is dropped, and a file does not end a document. Empty
   documents are removed, then `rng.shuffle(documents)`.
2. `dupe_factor` passes over the documents, each document giving its instances (`instances.py`).
3. `rng.shuffle(instances)`; instance i goes to output file i % (number of output files).

So one chunk (a corpus under `--chunk_size_mb`, or `--chunk_size_mb 0`) with Google's seed gives Google's
records, record for record (tests/tasks/test_pretraining_data.py checks four files Google's script wrote).

Outputs: `--output_file` (Google's: comma-separated files filled round-robin in chunk order, or one shard
directory), or `--output_dir` (one `part-<i>` per chunk, resumable, for many workers and machines: `parts.py`).
The records depend on the text, the flags, the seed and `--chunk_size_mb`, never on `--num_workers` or on how
many machines made them.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np

from bertkit.data.records import atomic_output, record_writer, serialize_rows
from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.data.vocab import check_data_vocab_target, default_vocab_path, read_vocab, record_data_vocab
from bertkit.tasks.pretrain import parts
from bertkit.tasks.pretrain.corpus import Chunk, input_files, read_chunks, read_lines, tokenize_documents
from bertkit.tasks.pretrain.flags import CreatePretrainingDataConfig
from bertkit.tasks.pretrain.instances import Compact, Documents, chunk_instances, expand, make_params

ROWS_PER_WRITE = 8192  # records serialized per numpy pass


def make_tokenizer(cfg: CreatePretrainingDataConfig) -> WordPieceTokenizer:
    """Google's FullTokenizer for these flags: a word longer than 200 characters (not 100) becomes [UNK]."""
    return WordPieceTokenizer(cfg.tokenizer.vocab_file, cfg.tokenizer.do_lower_case, max_input_chars_per_word=200)


def read_documents(files: list[Path], tokenizer: WordPieceTokenizer) -> Documents:
    """Every document of `files` in memory (Google's reader, step 1 of the module docstring): for tests and tools."""
    documents = tokenize_documents([line for line, _, _ in read_lines(files)], tokenizer)
    if not documents:
        raise ValueError(f"--input_file {', '.join(map(str, files))}: no text (every line is blank)")
    return documents


def make_features(documents: Documents, cfg: CreatePretrainingDataConfig, tokenizer) -> dict[str, np.ndarray]:
    """The records of `documents` made as one chunk with `--random_seed`, in output order, as Google's features."""
    instances, order = chunk_instances(
        list(documents), make_params(cfg, tokenizer), random.Random(cfg.masking.random_seed)
    )
    return expand(instances.take(order))


# --- one chunk: text -> instances -> records ------------------------------------------------------------------


def _stats(documents: Documents, instances: Compact, nbytes: int, seconds: float) -> dict:
    return {
        "text_bytes": nbytes,
        "documents": len(documents),
        "sentences": sum(len(d) for d in documents),
        "text_tokens": sum(len(s) for d in documents for s in d),
        "instances": len(instances),
        "instance_tokens": int(instances.length.sum()),
        "masked": int(instances.count.sum()),
        "random_next": int(instances.is_random_next.sum()),
        "seconds": seconds,
    }


def row_blocks(instances: Compact, order: list[int]):
    """Google's features of the instances in `order`, ROWS_PER_WRITE rows at a time (bounded memory)."""
    for lo in range(0, len(order), ROWS_PER_WRITE):
        yield expand(instances.take(order[lo : lo + ROWS_PER_WRITE]))


def payloads(instances: Compact, order: list[int], fmt: str):
    """The serialized records of the instances in `order`."""
    for rows in row_blocks(instances, order):
        yield from serialize_rows(rows, fmt)


def write_part(path: Path, instances: Compact, order: list[int], fmt: str, sources=(), vocab_size: int = 2**16) -> None:
    """One chunk's records as `path`, atomically: a record file, or a shard directory (narrow dtypes)."""
    if fmt != "shards":
        with record_writer(path, fmt) as write:
            for data in payloads(instances, order, fmt):
                write(data)
        return
    from bertkit.data.shards import ShardWriter, narrow_pretraining  # numpy only; imported when shards are written

    with atomic_output(path) as tmp:
        writer = ShardWriter(tmp)
        for rows in row_blocks(instances, order):
            writer.append(narrow_pretraining(rows, vocab_size))
        writer.close(sources)


_worker: dict = {}  # per process: the config, tokenizer and instance parameters


def _init_worker(cfg: CreatePretrainingDataConfig) -> None:
    if cfg.corpus.num_workers > 1:  # one thread per worker: N workers with N tokenizer threads each would oversubscribe
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    tokenizer = make_tokenizer(cfg)
    _worker.update(cfg=cfg, tokenizer=tokenizer, params=make_params(cfg, tokenizer))


def make_chunk(chunk: Chunk) -> tuple[int, dict, tuple[Compact, list[int]] | None]:
    """Make one chunk (in this process or a worker); with --output_dir write its part and manifest entry and
    return (index, stats, None), else return the instances for the caller to write in chunk order."""
    if not _worker:
        raise RuntimeError("make_chunk before _init_worker")
    start = time.perf_counter()
    cfg = _worker["cfg"]
    documents = tokenize_documents(chunk.lines, _worker["tokenizer"])
    rng = random.Random(parts.chunk_seed(cfg.masking.random_seed, chunk.index))
    instances, order = chunk_instances(documents, _worker["params"], rng)
    stats = _stats(documents, instances, chunk.nbytes, 0.0)
    del documents
    if not cfg.corpus.output_dir:
        return chunk.index, stats, (instances, order)
    out = Path(cfg.corpus.output_dir)
    vocab_size = len(_worker["params"].word_ids)
    write_part(
        out / f"part-{chunk.index}", instances, order, cfg.corpus.output_format, [(chunk.start, "text")], vocab_size
    )
    stats["seconds"] = time.perf_counter() - start
    parts.mark_finished(out, chunk.index, stats)
    return chunk.index, stats, None


def _made(chunks, cfg: CreatePretrainingDataConfig):
    """make_chunk over `chunks`, in order: here, or in --num_workers spawned processes with at most
    num_workers + 1 chunks in flight (the reader waits for them, so memory stays bounded)."""
    if cfg.corpus.num_workers == 1:
        _init_worker(cfg)
        yield from map(make_chunk, chunks)
        return
    import multiprocessing

    # spawn, not fork: the tokenizer's Rust threads are running, and fork copies locks held by them.
    with multiprocessing.get_context("spawn").Pool(cfg.corpus.num_workers, _init_worker, (cfg,)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(make_chunk, (chunk,)))
            if len(pending) > cfg.corpus.num_workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# --- the command --------------------------------------------------------------------------------------------


class _Progress:
    """Chunks, MiB/s and ETA: a bar on a terminal, one plain line per chunk otherwise (a log file)."""

    def __init__(self, total_bytes: float | None, enabled: bool) -> None:
        self.total, self.done, self.chunks, self.start = total_bytes, 0, 0, time.perf_counter()
        self.bar = None
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            total = total_bytes / 2**20 if total_bytes else None
            fmt = "{desc}{percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} MiB [{elapsed}<{remaining}{postfix}]"
            self.bar = tqdm(total=total, desc="chunks 0", dynamic_ncols=True,
                            bar_format=fmt if total else "{desc}{n:.1f} MiB [{elapsed}{postfix}]")  # fmt: skip

    def update(self, index: int, stats: dict) -> None:
        self.done, self.chunks = self.done + stats["text_bytes"], self.chunks + 1
        rate = self.done / 2**20 / max(time.perf_counter() - self.start, 1e-9)
        if self.bar is not None:
            self.bar.set_description(f"chunks {self.chunks}", refresh=False)
            self.bar.set_postfix_str(f"{rate:.2f} MiB/s", refresh=False)
            self.bar.update(stats["text_bytes"] / 2**20)
        elif self.enabled:
            eta = f", ETA {(self.total - self.done) / 2**20 / rate / 60:.1f} min" if self.total and rate else ""
            print(
                f"chunk {index} done: {stats['text_bytes'] / 2**20:.1f} MiB -> {stats['instances']:,} instances; "
                f"{self.chunks} chunks, {self.done / 2**20:.1f} MiB at {rate:.2f} MiB/s{eta}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _data_dir(cfg: CreatePretrainingDataConfig) -> Path | None:
    """Where the vocabulary is recorded: the output or shard directory, or the one folder all record files go to."""
    if cfg.corpus.output_dir:
        return Path(cfg.corpus.output_dir)
    outputs = [Path(s) for s in cfg.corpus.output_files()]
    if cfg.corpus.output_format == "shards":
        return outputs[0]
    folders = {p.parent for p in outputs}
    return folders.pop() if len(folders) == 1 else None


def _settings(cfg: CreatePretrainingDataConfig, files: list[Path], vocab: str) -> dict:
    """What the records in an --output_dir depend on (parts.open_output_dir compares it on a rerun)."""
    import hashlib

    keep = ("do_lower_case", "do_whole_word_mask", "max_seq_length", "max_predictions_per_seq", "random_seed",
            "dupe_factor", "masked_lm_prob", "short_seq_prob", "output_format", "chunk_size_mb", "text_field")  # fmt: skip
    flags = cfg.flat()
    return {k: flags[k] for k in keep} | {
        "inputs": parts.input_identity(files),
        "vocab_sha256": hashlib.sha256(Path(vocab).read_bytes()).hexdigest(),
    }


def _write_in_order(results, cfg: CreatePretrainingDataConfig, files: list[Path], on_chunk, vocab_size: int):
    """Google's outputs (--output_file): each chunk's records appended round-robin to the files, or to one shard
    directory, in chunk order; the outputs appear (renamed from temporaries) when every chunk is written."""
    outputs = [Path(s) for s in cfg.corpus.output_files()]
    with contextlib.ExitStack() as stack:
        if cfg.corpus.output_format == "shards":
            from bertkit.data.shards import ShardWriter, narrow_pretraining

            shards = ShardWriter(stack.enter_context(atomic_output(outputs[0])))
        else:
            writers = [stack.enter_context(record_writer(out, cfg.corpus.output_format)) for out in outputs]
        written = 0
        for index, stats, (instances, order) in results:
            if cfg.corpus.output_format == "shards":
                for rows in row_blocks(instances, order):
                    shards.append(narrow_pretraining(rows, vocab_size))
            else:
                for data in payloads(instances, order, cfg.corpus.output_format):
                    writers[written % len(writers)](data)
                    written += 1
            on_chunk(index, stats)
        if not written and not (cfg.corpus.output_format == "shards" and shards.rows):
            # Inside the outputs' context: nothing is left behind.
            raise ValueError(f"--input_file {', '.join(map(str, files))}: no text (every line is blank)")
        if cfg.corpus.output_format == "shards":
            shards.close([(f, "text") for f in files])


def create_pretraining_data(cfg: CreatePretrainingDataConfig, progress: bool = False) -> dict:
    """Read, make and write chunk by chunk; returns a summary of this process's chunks (counts and seconds)."""
    start = time.perf_counter()
    files = input_files(cfg.corpus.input_file)
    index, n = parts.resolve_shard(cfg.corpus.shard_index, cfg.corpus.num_shards)
    if n > 1 and not cfg.corpus.output_dir:
        raise ValueError(
            f"{n} processes share the chunks (--num_shards, RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS): pass "
            f"--output_dir, or --num_shards 1 for one process"
        )
    vocab, data_dir = cfg.tokenizer.vocab_file or default_vocab_path(), _data_dir(cfg)
    if progress:
        print(cfg.tokenizer.choose().line())
    if cfg.corpus.output_format == "shards" and not cfg.corpus.output_dir:  # refuse before the work, not after it
        from bertkit.data.shards import check_shards_output

        check_shards_output(Path(cfg.corpus.output_files()[0]), "--output_file")
    if data_dir is not None:
        check_data_vocab_target(data_dir, Path(vocab))
    if cfg.corpus.output_dir:
        parts.open_output_dir(Path(cfg.corpus.output_dir), _settings(cfg, files, vocab))
    seen = [0]  # chunks in the corpus, counted as the reader passes them

    def mine(chunks):
        for chunk in chunks:
            seen[0] = chunk.index + 1
            if chunk.index % n == index and not (
                cfg.corpus.output_dir and parts.finished(Path(cfg.corpus.output_dir), chunk.index)
            ):
                yield chunk

    plain = all(f.suffix == ".txt" or not f.suffix for f in files)
    bar = _Progress(sum(f.stat().st_size for f in files) / n if plain else None, progress)
    totals: dict = {}

    def on_chunk(i: int, stats: dict) -> None:
        for k, v in stats.items():
            totals[k] = totals.get(k, 0) + v
        totals["chunks"] = totals.get("chunks", 0) + 1
        bar.update(i, stats)

    try:
        results = _made(mine(read_chunks(files, cfg.corpus.chunk_size_mb, cfg.corpus.text_field)), cfg)
        if cfg.corpus.output_dir:
            for i, stats, _ in results:
                on_chunk(i, stats)
        else:
            _write_in_order(results, cfg, files, on_chunk, len(read_vocab(vocab)))
    finally:
        bar.close()
    if data_dir is not None:  # what pretraining copies into its snapshots (vocab.data_vocab)
        record_data_vocab(data_dir, vocab, cfg.tokenizer.do_lower_case)
    manifest = parts.finish(Path(cfg.corpus.output_dir), seen[0]) if cfg.corpus.output_dir else None
    real = max(totals.get("instance_tokens", 0), 1)
    return {
        "files": len(files),
        "chunks": totals.get("chunks", 0),
        "corpus_chunks": seen[0],
        "complete": manifest is not None if cfg.corpus.output_dir else True,
        **{k: totals.get(k, 0) for k in ("text_bytes", "documents", "sentences", "text_tokens", "instances")},
        "instance_tokens": totals.get("instance_tokens", 0),
        "masked_fraction": totals.get("masked", 0) / real,
        "random_next_fraction": totals.get("random_next", 0) / max(totals.get("instances", 0), 1),
        "seconds": time.perf_counter() - start,
    }


def run(cfg: CreatePretrainingDataConfig) -> dict:
    s = create_pretraining_data(cfg, progress=True)
    where = cfg.corpus.output_dir or cfg.corpus.output_file
    print(
        f"create-pretraining-data: {s['chunks']} chunk(s) of {s['corpus_chunks']} ({s['text_bytes'] / 2**20:.1f} "
        f"MiB of text, {s['documents']:,} documents, {s['sentences']:,} sentences, {s['text_tokens']:,} tokens) "
        f"from {s['files']} file(s) -> {s['instances']:,} instances ({s['instance_tokens']:,} tokens, "
        f"{s['masked_fraction']:.1%} masked, {s['random_next_fraction']:.1%} random next) in {cfg.corpus.output_format} at "
        f"{where}; {s['seconds']:.1f} s, {s['text_bytes'] / 2**20 / max(s['seconds'], 1e-9):.2f} MiB/s"
        + ("" if s["complete"] else "; other processes' chunks are not all finished yet")
    )
    return s
