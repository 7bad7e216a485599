"""`bertkit serve` is fair and bounded: the batcher cuts work into token-budget batches and lets small requests in
between a large one's; a request whose client disconnects or whose deadline passes is dropped (its rows never
run); --max_concurrent_requests gives 429; slow senders (head or body) are cut off; --max_connections gives 503.
Unit tests on the batcher with a fake engine and in-process ones here; the real-server cases (disconnect, slow
senders, open connections) are in test_serve.py, on its server process."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest
from serve_fixtures import CONTEXT, samples

from bertkit.serve.batcher import Batcher, Dropped

# --- the batcher, with a fake engine ---------------------------------------------------------------------------


@dataclass
class Rows:
    inputs: tuple


class FakeEngine:
    """Items are (tag, rows, length): `rows` rows of `length` tokens whose ids are all `tag`. The model records each
    batch's tags and takes `delay` seconds."""

    def __init__(self, delay: float = 0.01):
        self.delay, self.batches = delay, []

    def prepare(self, items):
        tags = [tag for tag, rows, _ in items for _ in range(rows)]
        lengths = [length for _, rows, length in items for _ in range(rows)]
        T = 128  # every row of one engine has the same width, as a server's windows do
        ids = np.array(tags)[:, None] * np.ones(T, np.int64)
        mask = (np.arange(T)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
        return Rows((ids, mask, np.zeros_like(ids)))

    def logits(self, ids, mask, types):
        time.sleep(self.delay)
        self.batches.append(ids[:, 0].tolist())
        return (ids[:, :1].astype(np.float32),)

    def finish(self, prepared, logits):
        return logits[0][:, 0].tolist()


def run_async(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_a_large_request_runs_in_budget_batches_and_small_ones_go_in_between():
    engine = FakeEngine(delay=0.02)

    async def main():
        b = Batcher(engine, max_batch_tokens=400, wait_s=0)
        loop = asyncio.create_task(b.run())
        far = time.monotonic() + 60
        big = await b.prepare([(1, 20, 100)], far)  # 2,000 tokens: five batches of four rows
        big_result = asyncio.ensure_future(b.result(big))
        await asyncio.sleep(0.03)  # the first big batch is running
        small = await b.prepare([(2, 1, 10)], far)
        small_result = await b.result(small)
        big_done = big_result.done()
        results = await big_result
        loop.cancel()
        b.close()
        return small_result, big_done, results

    small, big_done_first, big = run_async(main())
    assert small == [2.0] and big == [1.0] * 20 and not big_done_first
    assert all(len(batch) <= 4 for batch in engine.batches)  # 400 tokens = four 100-token rows
    where = next(i for i, batch in enumerate(engine.batches) if 2 in batch)
    assert where <= 2, engine.batches  # the small request waited for at most the batch running when it came
    assert engine.batches[where] == [2]  # and its batch was not filled up with the large request's rows


def test_a_stream_of_new_requests_does_not_starve_a_started_one():
    engine = FakeEngine(delay=0.005)

    async def main():
        b = Batcher(engine, max_batch_tokens=400, wait_s=0)
        loop = asyncio.create_task(b.run())
        far = time.monotonic() + 60
        big = asyncio.ensure_future(b.result(await b.prepare([(1, 12, 100)], far)))
        smalls = []
        while not big.done():  # a new small request at every turn of the loop
            smalls.append(asyncio.ensure_future(b.result(await b.prepare([(2, 1, 10)], far))))
            await asyncio.sleep(0.002)
        await asyncio.gather(*smalls)
        loop.cancel()
        b.close()

    run_async(main())
    with_big = [i for i, batch in enumerate(engine.batches) if 1 in batch]
    assert max(np.diff(with_big)) <= 2, engine.batches  # the started request is in at least every other batch


def test_a_dropped_request_stops_between_batches():
    engine = FakeEngine(delay=0.02)

    async def main():
        b = Batcher(engine, max_batch_tokens=100, wait_s=0)
        loop = asyncio.create_task(b.run())
        job = await b.prepare([(1, 30, 100)], time.monotonic() + 60)
        waiting = asyncio.ensure_future(b.result(job))
        await asyncio.sleep(0.05)
        b.drop(job, "disconnect")
        with pytest.raises(Dropped):
            await waiting
        await asyncio.sleep(0.1)
        timed = await b.prepare([(3, 30, 100)], time.monotonic() + 0.05)  # its deadline passes after ~2 batches
        with pytest.raises(Dropped, match="timeout"):
            await b.result(timed)
        loop.cancel()
        b.close()

    run_async(main())
    ran = [t for batch in engine.batches for t in batch]
    assert 1 <= ran.count(1) < 10 and ran.count(3) < 10  # neither ran its 30 rows


# --- in process: 429 and the deadline --------------------------------------------------------------------------


def test_over_max_concurrent_requests_is_429_and_a_deadline_drops_the_work(make_client, tiny_qa, monkeypatch):
    gate, real = threading.Event(), tiny_qa.logits

    def held(*inputs):
        gate.wait(10)
        return real(*inputs)

    monkeypatch.setattr(tiny_qa, "logits", held)
    body = {"question": "Who won?", "context": CONTEXT}
    with make_client(tiny_qa, max_concurrent_requests=2, request_timeout=0.5) as c, ThreadPoolExecutor(2) as pool:
        held_requests = [pool.submit(c.post, "/answer", json=body) for _ in range(2)]
        time.sleep(0.2)
        r = c.post("/answer", json=body)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        slow = [f.result(timeout=10) for f in held_requests]  # the model is held past --request_timeout
        gate.set()
        assert [s.status_code for s in slow] == [503, 503] and "request_timeout" in slow[0].json()["detail"]
        metrics = samples(c.get("/metrics").text)
        assert metrics['bertkit_requests_dropped_total{reason="timeout"}'] >= 1
        assert c.post("/answer", json=body).status_code == 200
