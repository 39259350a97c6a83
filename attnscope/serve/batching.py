"""Dynamic batching: requests that arrive together share one forward pass, off the event loop.

Each request submits its images under a key (what to compute, e.g. ``("explain",
"gradcam")``). One consumer task waits for the oldest request's batch to fill, up
to ``max_batch`` images or ``max_wait_ms`` after that request arrived, whichever
comes first, then runs the batch in a single worker thread and hands every
request its own results. It waits only while more requests are on their way (the
web layer reports each request from its arrival, :meth:`DynamicBatcher.arriving`,
while its upload is read and decoded): a lone request runs at once, with no added
latency. While a batch runs, the next one gathers, so under load batches fill
without waiting. The event loop never runs inference itself: the server keeps
answering (health checks, uploads) while a batch computes.

With ``enabled=False`` every request is its own batch, at once: the baseline the
serving benchmark compares with.

The queue is bounded (:class:`Shares`: ``max_queue`` images waiting, of which
``max_client_queue`` from one client): a request that would pass a bound is
refused at once with :class:`ServerBusy`, so that a flood is answered "busy,
retry" instead of every request waiting longer, and one client's flood leaves
room for the others. A request whose caller stops waiting (its deadline passed,
its client left) is cancelled, and a batch that has not started leaves it out.

Keys share the worker by cost, not by arrival: each key's batches are ordered by
start-time fair queueing (Goyal et al. 1996), each batch costing its images times
its key's cost per image (a prediction 1, an occlusion map 301 forward passes), so
a cheap prediction never waits behind a queue of costly maps, only behind the one
batch computing; and no batch costs more than ``max_batch_cost``, which bounds that
wait. A key that keeps sending is never starved: it gets its share of the compute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from attnscope.errors import AttnscopeError

log = logging.getLogger(__name__)


class ServerBusy(AttnscopeError):
    """The batcher's queue is full: the request should be sent again later."""


RunBatch = Callable[[Hashable, list[Any]], list[Any]]


def _one(_key: Hashable) -> int:
    return 1


@dataclass(frozen=True)
class Shares:
    """How the batcher divides its queue and its worker: ``max_queue`` items may wait in all, ``max_client_queue``
    of them from one client; an item of ``key`` costs ``cost(key)``, and a batch at most ``max_batch_cost``
    unless it is one request (None: no bound)."""

    max_queue: int | None = None
    max_client_queue: int | None = None
    max_batch_cost: int | None = None
    cost: Callable[[Hashable], int] = _one

    def check(self) -> None:
        for name in ("max_queue", "max_client_queue", "max_batch_cost"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value} must be None or >= 1")


@dataclass
class _Job:
    key: Hashable
    items: list[Any]
    future: asyncio.Future[list[Any]]
    arrived: float
    client: str | None = None


@dataclass
class BatchStats:
    """How many batches ran and how many items they held (the mean batch size is their ratio)."""

    batches: int = 0
    items: int = 0
    largest: int = 0
    sizes: dict[int, int] = field(default_factory=dict)

    def record(self, size: int) -> None:
        self.batches += 1
        self.items += size
        self.largest = max(self.largest, size)
        self.sizes[size] = self.sizes.get(size, 0) + 1


class DynamicBatcher:
    """Gathers submitted items into batches per key and runs ``run_batch(key, items)`` in one worker thread.

    ``run_batch`` returns one result per item, in order. Start with :meth:`start` inside
    the event loop that will submit, stop with :meth:`stop`.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        enabled: bool = True,
        shares: Shares | None = None,
        on_batch: Callable[[int], None] | None = None,
    ):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch={max_batch} must be >= 1 and max_wait_ms={max_wait_ms} >= 0")
        self.shares = shares or Shares()
        self.shares.check()
        self.run_batch, self.max_batch, self.max_wait, self.enabled = run_batch, max_batch, max_wait_ms / 1000, enabled
        self.on_batch = on_batch
        self.stats = BatchStats()
        self._virtual = 0.0  # the start tag of the last batch started (fair queueing's virtual time)
        self._finish: dict[Hashable, float] = {}  # each key's finish tag: where its next batch starts
        self._pending: deque[_Job] = deque()
        self._executor: ThreadPoolExecutor | None = None
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._open = 0  # requests that arrived and have not finished
        self._submitted = 0  # of those, the ones that submitted and await their results

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Count a request from its arrival to its end: while it has not submitted, a batch waits for it."""
        self._open += 1
        try:
            yield
        finally:
            self._open -= 1
            if self._wakeup is not None:
                self._wakeup.set()  # a request that ends without submitting must not be waited for

    @property
    def expected(self) -> int:
        """Requests on their way: arrived, not yet submitted."""
        return max(self._open - self._submitted, 0)

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attnscope-inference")
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._consume(), name="attnscope-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for job in self._pending:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is stopping"))
        self._pending.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    @property
    def queued(self) -> int:
        """Items waiting for a batch (not those computing now)."""
        return sum(len(job.items) for job in self._pending if not job.future.done())

    def _check_room(self, items: int, client: str | None) -> None:
        shares = self.shares
        if shares.max_queue is not None and self.queued + items > shares.max_queue:
            raise ServerBusy(
                f"the server is busy ({self.queued} image(s) waiting, the queue holds {shares.max_queue}); "
                "send the request again in a moment"
            )
        if shares.max_client_queue is not None and client is not None:
            theirs = sum(len(job.items) for job in self._pending if job.client == client and not job.future.done())
            if theirs + items > shares.max_client_queue:
                raise ServerBusy(
                    f"this client has {theirs} image(s) waiting and may have {shares.max_client_queue}, its share "
                    "of the queue; send the request again when an answer has come"
                )

    async def submit(self, key: Hashable, items: list[Any], client: str | None = None) -> list[Any]:
        """The results of ``items``, computed in a batch with whatever else is waiting under ``key``; ``client``
        (its address) is held to its share of the queue. Cancelling the caller cancels the request (a batch
        that has not started leaves it out)."""
        if self._wakeup is None:
            raise RuntimeError("the batcher has not been started")
        self._check_room(len(items), client)
        loop = asyncio.get_running_loop()
        job = _Job(key, list(items), loop.create_future(), loop.time(), client)
        self._pending.append(job)
        self._submitted += 1
        self._wakeup.set()
        try:
            return await job.future
        finally:
            self._submitted -= 1

    async def _consume(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                if self.enabled:
                    await self._fill()
                jobs = self._take()
                if jobs:
                    await self._run(jobs)

    def _waiting(self, key: Hashable) -> int:
        return sum(len(job.items) for job in self._pending if job.key == key and not job.future.done())

    async def _fill(self) -> None:
        """Wait until the oldest request's key has a full batch, no more requests are on their way, or its
        time is up."""
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        oldest = self._pending[0]
        deadline = oldest.arrived + self.max_wait
        while (
            self._waiting(oldest.key) < self.max_batch
            and self.expected > 0
            and (remaining := deadline - loop.time()) > 0
        ):
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break

    def _next_key(self) -> Hashable:
        """The key whose next batch starts earliest in fair queueing's virtual time (the oldest on a tie)."""
        keys = list(dict.fromkeys(job.key for job in self._pending if not job.future.done()))
        return min(keys, key=lambda key: max(self._virtual, self._finish.get(key, 0.0)))

    def _take(self) -> list[_Job]:
        """The oldest requests of the next key that fit in one batch (requests are never split; a batch holds at
        most ``max_batch`` items and costs at most ``max_batch_cost``, unless it is one request)."""
        while self._pending and self._pending[0].future.done():  # its client went away
            self._pending.popleft()
        if not self._pending:
            return []
        if not any(not job.future.done() for job in self._pending):
            self._pending.clear()
            return []
        key = self._next_key()
        per_item, most = self.shares.cost(key), self.shares.max_batch_cost
        chosen: list[_Job] = []
        count = 0
        for job in self._pending:
            if job.key != key or job.future.done():
                continue
            grown = count + len(job.items)
            too_costly = most is not None and grown * per_item > most
            if chosen and (not self.enabled or grown > self.max_batch or too_costly):
                break
            chosen.append(job)
            count = grown
        for job in chosen:
            self._pending.remove(job)
        self._charge(key, count * per_item)
        return chosen

    def _charge(self, key: Hashable, cost: int) -> None:
        """Advance the virtual time to this batch's start and ``key``'s finish tag past it; forget keys that are
        behind the virtual time (they would start there anyway)."""
        self._virtual = max(self._virtual, self._finish.get(key, 0.0))
        self._finish[key] = self._virtual + cost
        for stale in [name for name, finish in self._finish.items() if finish <= self._virtual]:
            del self._finish[stale]

    async def _run(self, jobs: list[_Job]) -> None:
        items = [item for job in jobs for item in job.items]
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self.run_batch, jobs[0].key, items)
        except Exception as error:  # every request of the batch learns why
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        self.stats.record(len(items))
        if self.on_batch is not None:
            self.on_batch(len(items))
        start = 0
        for job in jobs:
            if not job.future.done():
                job.future.set_result(results[start : start + len(job.items)])
            start += len(job.items)
