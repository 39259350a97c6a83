"""Dynamic batching: requests gather into batches per key, in one worker thread, off the event loop."""

import asyncio
import threading
import time

import pytest

from attnscope.serve.batching import DynamicBatcher, ServerBusy, Shares


class Recorder:
    """A batch function that doubles its items and remembers every batch and the thread it ran in."""

    def __init__(self, delay: float = 0.0, fail_on: object = None) -> None:
        self.batches: list[tuple[object, list]] = []
        self.threads: set[int] = set()
        self.delay, self.fail_on = delay, fail_on

    def __call__(self, key, items):
        self.threads.add(threading.get_ident())
        self.batches.append((key, list(items)))
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on in items:
            raise ValueError(f"cannot do {self.fail_on}")
        return [item * 2 for item in items]


async def request(batcher, key, items):
    """What the web layer does: the request is announced on arrival, then submits."""
    with batcher.arriving():
        await asyncio.sleep(0)  # reading and decoding the upload
        return await batcher.submit(key, items)


async def serve(batcher, jobs):
    """Start the batcher, send ``jobs`` (key, items) at once, and return each job's results or exception."""
    await batcher.start()
    try:
        return await asyncio.gather(*(request(batcher, key, items) for key, items in jobs), return_exceptions=True)
    finally:
        await batcher.stop()


def test_requests_that_arrive_together_share_one_batch_and_get_their_own_results():
    recorder = Recorder()
    batcher = DynamicBatcher(recorder, max_batch=32, max_wait_ms=50)
    results = asyncio.run(serve(batcher, [("k", [i]) for i in range(10)]))
    assert results == [[2 * i] for i in range(10)]
    assert recorder.batches == [("k", list(range(10)))]
    assert (batcher.stats.batches, batcher.stats.items, batcher.stats.largest) == (1, 10, 10)


def test_a_batch_never_exceeds_max_batch_and_never_splits_a_request():
    recorder = Recorder()
    jobs = [("k", [3 * i, 3 * i + 1, 3 * i + 2]) for i in range(10)]
    results = asyncio.run(serve(DynamicBatcher(recorder, max_batch=8, max_wait_ms=20), jobs))
    assert results == [[2 * x for x in items] for _, items in jobs]
    sizes = [len(items) for _, items in recorder.batches]
    assert all(size <= 8 for size in sizes) and sum(sizes) == 30
    assert all(size % 3 == 0 for size in sizes)  # whole requests only
    assert [x for _, items in recorder.batches for x in items] == list(range(30))  # first come, first served


def test_a_request_larger_than_max_batch_runs_alone():
    recorder = Recorder()
    results = asyncio.run(serve(DynamicBatcher(recorder, max_batch=4, max_wait_ms=5), [("k", list(range(6)))]))
    assert results == [[2 * x for x in range(6)]]
    assert recorder.batches == [("k", list(range(6)))]


def test_keys_are_never_mixed_in_a_batch():
    recorder = Recorder()
    jobs = [(("predict",) if i % 2 else ("explain", "gradcam"), [i]) for i in range(8)]
    results = asyncio.run(serve(DynamicBatcher(recorder, max_batch=32, max_wait_ms=30), jobs))
    assert results == [[2 * i] for i in range(8)]
    assert sorted((key, tuple(items)) for key, items in recorder.batches) == sorted(
        [(("explain", "gradcam"), (0, 2, 4, 6)), (("predict",), (1, 3, 5, 7))]
    )


def test_with_batching_off_every_request_is_its_own_batch():
    recorder = Recorder()
    results = asyncio.run(serve(DynamicBatcher(recorder, max_batch=32, enabled=False), [("k", [i]) for i in range(5)]))
    assert results == [[2 * i] for i in range(5)]
    assert recorder.batches == [("k", [i]) for i in range(5)]


def test_a_failing_batch_fails_its_own_requests_only_and_the_batcher_goes_on():
    recorder = Recorder(fail_on=13)

    async def scenario():
        batcher = DynamicBatcher(recorder, max_batch=2, max_wait_ms=20)
        await batcher.start()
        try:
            first = await asyncio.gather(
                batcher.submit("k", [13]), batcher.submit("k", [1]), batcher.submit("k", [2]), return_exceptions=True
            )
            later = await batcher.submit("k", [5])
        finally:
            await batcher.stop()
        return first, later

    first, later = asyncio.run(scenario())
    assert isinstance(first[0], ValueError) and isinstance(first[1], ValueError)  # the batch [13, 1]
    assert first[2] == [4] and later == [10]


def test_inference_runs_in_one_worker_thread_while_the_event_loop_keeps_answering():
    recorder = Recorder(delay=0.3)

    async def scenario():
        batcher = DynamicBatcher(recorder, max_batch=1, max_wait_ms=0)
        await batcher.start()
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        try:
            results = await asyncio.gather(batcher.submit("k", [1]), batcher.submit("k", [2]))
        finally:
            ticker.cancel()
            await batcher.stop()
        return results, ticks

    results, ticks = asyncio.run(scenario())
    assert results == [[2], [4]]
    assert ticks >= 20  # 0.6 s of inference; a blocked loop would have ticked about once
    assert len(recorder.threads) == 1 and threading.get_ident() not in recorder.threads


def test_a_request_whose_client_went_away_is_not_computed():
    recorder = Recorder(delay=0.2)

    async def scenario():
        batcher = DynamicBatcher(recorder, max_batch=1, max_wait_ms=0)
        await batcher.start()
        try:
            busy = asyncio.create_task(batcher.submit("k", [1]))
            await asyncio.sleep(0.05)  # [1] is computing; [2] waits behind it
            gone = asyncio.create_task(batcher.submit("k", [2]))
            await asyncio.sleep(0.01)
            gone.cancel()
            return await busy, await batcher.submit("k", [3])
        finally:
            await batcher.stop()

    assert asyncio.run(scenario()) == ([2], [6])
    assert [items for _, items in recorder.batches] == [[1], [3]]


def test_a_lone_request_runs_at_once_and_a_batch_waits_only_for_requests_on_their_way():
    recorder = Recorder()

    async def scenario():
        batcher = DynamicBatcher(recorder, max_batch=32, max_wait_ms=2000)
        await batcher.start()
        loop = asyncio.get_running_loop()
        try:
            started = loop.time()
            alone = await request(batcher, "k", [1])
            alone_s = loop.time() - started

            async def late():  # announced at once, submitted 0.2 s later
                with batcher.arriving():
                    await asyncio.sleep(0.2)
                    return await batcher.submit("k", [3])

            async def failing():  # announced, then fails before submitting (a bad upload)
                with batcher.arriving():
                    await asyncio.sleep(0.3)

            started = loop.time()
            together = await asyncio.gather(request(batcher, "k", [2]), late(), failing())
            return alone, alone_s, together, loop.time() - started
        finally:
            await batcher.stop()

    alone, alone_s, together, together_s = asyncio.run(scenario())
    assert alone == [2] and alone_s < 1.0  # nothing else was coming: no 2 s wait
    assert together[:2] == [[4], [6]] and together_s < 1.5
    assert [items for _, items in recorder.batches] == [[1], [2, 3]]


def test_submitting_before_start_and_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch=0"):
        DynamicBatcher(Recorder(), max_batch=0)
    with pytest.raises(RuntimeError, match="not been started"):
        asyncio.run(DynamicBatcher(Recorder()).submit("k", [1]))


def _costly_then_cheap(shares):
    """Four costly requests (key "map", 1 image each) queued behind one that computes, then one cheap request:
    the order the batches ran in."""
    recorder = Recorder(delay=0.05)

    async def scenario():
        batcher = DynamicBatcher(recorder, max_batch=32, max_wait_ms=0, shares=shares)
        await batcher.start()
        try:
            running = [asyncio.create_task(batcher.submit("map", [n])) for n in range(5)]
            await asyncio.sleep(0.01)  # the first costly batch is computing
            cheap = asyncio.create_task(batcher.submit("predict", [100]))
            await asyncio.gather(*running, cheap)
        finally:
            await batcher.stop()

    asyncio.run(scenario())
    return recorder.batches


def test_a_cheap_request_waits_only_for_the_batch_computing_not_for_the_costly_queue():
    shares = Shares(max_batch_cost=300, cost=lambda key: 300 if key == "map" else 1)
    batches = _costly_then_cheap(shares)
    assert batches[0] == ("map", [0])  # computing when the cheap request came
    assert batches[1] == ("predict", [100])  # before the four costly requests queued before it
    assert [items for key, items in batches[2:]] == [[1], [2], [3], [4]]  # one per batch: each costs the limit


def test_without_a_cost_limit_the_costly_requests_share_one_batch_that_the_cheap_one_waits_for():
    assert _costly_then_cheap(Shares()) == [("map", [0, 1, 2, 3, 4]), ("predict", [100])]


def test_a_key_that_keeps_sending_is_never_starved():
    recorder = Recorder()

    async def scenario():
        shares = Shares(max_batch_cost=10, cost=lambda key: 10 if key == "map" else 1)
        batcher = DynamicBatcher(recorder, max_batch=4, max_wait_ms=0, shares=shares)
        await batcher.start()
        try:
            jobs = [batcher.submit("predict", [n]) for n in range(40)] + [batcher.submit("map", [-1])]
            await asyncio.gather(*jobs)
        finally:
            await batcher.stop()

    asyncio.run(scenario())
    keys = [key for key, _ in recorder.batches]
    # the map costs ten predictions: it runs once the predictions have had about that much of the worker
    assert keys.index("map") <= 4 and len(keys) == 11


def test_one_client_may_fill_only_its_share_of_the_queue():
    async def scenario():
        shares = Shares(max_queue=8, max_client_queue=3)
        batcher = DynamicBatcher(Recorder(delay=0.2), max_batch=1, max_wait_ms=0, shares=shares)
        await batcher.start()
        try:
            first = asyncio.create_task(batcher.submit("k", [0], client="a"))
            await asyncio.sleep(0.05)  # computing: no longer waiting
            mine = [asyncio.create_task(batcher.submit("k", [n], client="a")) for n in (1, 2, 3)]
            await asyncio.sleep(0)
            with pytest.raises(ServerBusy, match="this client has 3 image"):
                await batcher.submit("k", [4], client="a")
            other = await batcher.submit("k", [5], client="b")  # another client still has room
            return await first, [await job for job in mine], other
        finally:
            await batcher.stop()

    assert asyncio.run(scenario()) == ([0], [[2], [4], [6]], [10])
