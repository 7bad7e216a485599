"""The server's scheduler: the model rows (QA windows, classifier texts) of every waiting request, cut into batches
of at most --max_batch_tokens real tokens, fairly, on one model thread.

Fairness and bounds, the way Hugging Face's text-embeddings-inference batches (a token budget per batch, not a
request count) and then some:
- A batch is filled from the requests that have had the fewest tokens run so far (ties: the oldest first), row by
  row, until the token budget is spent. A 1 MB request is run in budget-sized batches, and a small request that
  arrives meanwhile goes into the next batch, with other new requests only: it waits for at most one batch, never
  for the whole large request (`take` says how the large one is never starved either).
- A request whose client has gone, or whose deadline (--request_timeout) has passed, is dropped: its rows not yet
  run never reach the model, and a request being run stops between batches.
- Tokenizing and answer extraction (`prepare`, `finish`) run on their own threads, so the model thread only runs
  the model.

An engine is what runs one kind of model (`QuestionAnswerer`, `TextClassifier`); it provides
    prepare(items) -> prepared         with prepared.inputs = (input_ids, input_mask, segment_ids), each (N, T)
    logits(ids, mask, types) -> tuple of arrays (n, ...), one row per input row (its length-sorted prediction loop)
    finish(prepared, logits) -> one result per item
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bertkit.serve.metrics import ServerMetrics


class Dropped(Exception):
    """A request's work was dropped: `reason` is "disconnect" or "timeout"."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(eq=False)
class Job:
    """One request's rows on their way through the model. `inputs` (ids, mask, types) are (N, T); `outputs` are
    filled batch by batch; `next` rows have been handed to the model, `done` have come back."""

    prepared: Any
    inputs: tuple[np.ndarray, np.ndarray, np.ndarray]
    lengths: np.ndarray  # (N,) real tokens per row
    deadline: float  # time.monotonic() after which the request is dropped
    future: asyncio.Future
    seq: int
    enqueued: float = field(default_factory=time.monotonic)
    outputs: list[np.ndarray] | None = None
    next: int = 0
    done: int = 0
    served_tokens: int = 0
    started: bool = False

    @property
    def rows(self) -> int:
        return len(self.lengths)


def _heap_trimmer():
    """glibc's malloc_trim, or a no-op where there is none. Batches of ever-different shapes leave freed heap memory
    that glibc keeps: without trimming, the server's RSS grew by 122 MiB in 30 s of bench_serve.py load (tiny
    model), with it by a few MiB (the memory is free, not leaked)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return lambda: libc.malloc_trim(0)
    except (OSError, AttributeError):
        return lambda: None


class Batcher:
    """Schedules the rows of waiting jobs into token-budget batches on one model thread; see the module docstring.

    `max_batch_tokens`: real tokens per model batch (a row longer than it runs alone). `wait_s`: how long an idle
    model waits to collect concurrent requests into its first batch.
    """

    def __init__(self, engine, max_batch_tokens: int, wait_s: float, metrics: ServerMetrics | None = None):
        self.engine, self.max_batch_tokens, self.wait_s = engine, max_batch_tokens, wait_s
        self.metrics = metrics
        self.pending: list[Job] = []
        self.wake = asyncio.Event()
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertkit-model")
        # Several threads: a small request's tokenizing must not wait behind a 1 MB request's.
        self.cpu_threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="bertkit-prepare")
        self.counter = itertools.count()
        self.batches = self.rows_run = 0
        self.fresh_only = False  # whether the last batch left out started jobs (see take)
        self.trim = _heap_trimmer()

    # --- the request's side ---------------------------------------------------------------------------------------

    async def prepare(self, items: list, deadline: float) -> Job:
        """Tokenize a request's items into a job (off the event loop); ValueError from the engine's checks."""
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(self.cpu_threads, self.engine.prepare, items)
        inputs = prepared.inputs
        return Job(prepared, inputs, inputs[1].astype(bool).sum(1), deadline, loop.create_future(), next(self.counter))

    async def result(self, job: Job) -> list:
        """Queue the job and wait for its results (raises Dropped when it was dropped)."""
        if job.rows == 0:  # nothing for the model (a context without words)
            return await self._finish(job, self.engine.logits(*(a[:0] for a in job.inputs)))
        self.pending.append(job)
        self.wake.set()
        return await job.future

    def drop(self, job: Job, reason: str) -> None:
        """Drop a job (client gone, deadline passed): its remaining rows are not run."""
        if job in self.pending:
            self.pending.remove(job)
        if not job.future.done():
            job.future.set_exception(Dropped(reason))
            if self.metrics:
                self.metrics.dropped.inc(reason)

    def queued_rows(self) -> int:
        return sum(j.rows - j.next for j in self.pending)

    # --- the model's side ----------------------------------------------------------------------------------------

    def take(self) -> list[tuple[Job, int, int]]:
        """The next batch: (job, first row, end row) slices, least-served jobs first, within the token budget.

        While some job has had nothing run yet (a request that just came), the batch holds only such jobs, so a
        small request's batch is short and not filled up with a large request's rows; but never twice in a row
        while a started job waits, so a large request gets at least every other batch and is never starved.
        """
        fresh = [j for j in self.pending if j.next == 0]
        started = len(fresh) < len(self.pending)
        jobs = fresh if fresh and not (self.fresh_only and started) else self.pending
        self.fresh_only = jobs is fresh and started
        budget, batch = self.max_batch_tokens, []
        for job in sorted(jobs, key=lambda j: (j.served_tokens, j.seq)):
            start = stop = job.next
            while stop < job.rows and (int(job.lengths[stop]) <= budget or not batch and stop == start):
                budget -= int(job.lengths[stop])
                stop += 1
            if stop > start:
                batch.append((job, start, stop))
                job.next = stop
                job.served_tokens += int(job.lengths[start:stop].sum())
            if budget <= 0:
                break
        return batch

    async def run(self) -> None:
        """The scheduling loop (one task for the server's life)."""
        while True:
            if not self.pending:
                self.wake.clear()
                await self.wake.wait()
                if self.wait_s > 0:  # the collection window of an idle model
                    await asyncio.sleep(self.wait_s)
            now = time.monotonic()
            for job in [j for j in self.pending if j.deadline <= now]:
                self.drop(job, "timeout")
            batch = self.take()
            for job in {j for j, _, _ in batch}:
                if job.next == job.rows:  # all its rows are in this batch or an earlier one
                    self.pending.remove(job)
            if not batch:
                continue
            try:
                await self._run_batch(batch, now)
            except Exception as e:  # reported to each job of the batch (one log line each); the loop goes on
                for job in {j for j, _, _ in batch}:
                    if job in self.pending:
                        self.pending.remove(job)
                    if not job.future.done():
                        job.future.set_exception(e)

    async def _run_batch(self, batch: list[tuple[Job, int, int]], now: float) -> None:
        """The model on the batch's rows (all jobs of one engine share the row width T), the outputs scattered."""
        for job, _, _ in batch:
            if not job.started and self.metrics:
                self.metrics.queue_wait.observe(now - job.enqueued)
            job.started = True
        inputs = [np.concatenate([j.inputs[k][a:b] for j, a, b in batch]) for k in range(3)]
        began = time.perf_counter()
        loop = asyncio.get_running_loop()
        outputs = await loop.run_in_executor(self.model_thread, self.engine.logits, *inputs)
        self._record(inputs, time.perf_counter() - began)
        self._scatter(batch, outputs)

    def _record(self, inputs: list[np.ndarray], seconds: float) -> None:
        tokens = int(inputs[1].astype(bool).sum())
        self.batches += 1
        self.rows_run += len(inputs[0])
        if self.metrics:
            self.metrics.batch_rows.observe(len(inputs[0]))
            self.metrics.batch_tokens.observe(tokens)
            self.metrics.batch_seconds.observe(seconds)
            self.metrics.tokens.inc(by=tokens)
        if not self.pending:
            self.trim()  # the model is going idle: hand its freed memory back

    def _scatter(self, batch, outputs) -> None:
        """Each job's rows of the batch's outputs; a job with all its rows back is finished (answers extracted)."""
        i = 0
        for job, a, b in batch:
            if job.outputs is None:
                job.outputs = [np.empty((job.rows, *o.shape[1:]), o.dtype) for o in outputs]
            for out, o in zip(job.outputs, outputs, strict=True):
                out[a:b] = o[i : i + b - a]
            i += b - a
            job.done += b - a
            if job.done == job.rows and not job.future.done():
                asyncio.ensure_future(self._complete(job))

    async def _complete(self, job: Job) -> None:
        try:
            results = await self._finish(job, job.outputs)
        except Exception as e:
            if not job.future.done():
                job.future.set_exception(e)
            return
        if not job.future.done():
            job.future.set_result(results)

    async def _finish(self, job: Job, outputs: list[np.ndarray]) -> list:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.cpu_threads, self.engine.finish, job.prepared, tuple(outputs))

    def close(self) -> None:
        for job in list(self.pending):
            self.drop(job, "shutdown")
        self.model_thread.shutdown(wait=False, cancel_futures=True)
        self.cpu_threads.shutdown(wait=False, cancel_futures=True)
