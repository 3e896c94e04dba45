"""Back-pressure: bounded concurrency per stage, a bounded wait queue, per-request deadlines.

Each CPU- or service-bound stage (``embed``, ``rerank``, ``lm``, and ``request`` for admitting whole
requests) has a :class:`StageGate`: at most ``limit`` holders run at once, at most ``max_queue`` more
wait, and anyone beyond that is turned away at once with :class:`Overloaded` (HTTP 503 +
``Retry-After``), so latency never piles up unboundedly. Work runs in a bounded thread pool, off the
event loop; a gate slot is held until the thread finishes, even when the request that started it has
already timed out, so the limits describe what the CPU is really doing.

Gates are thread-safe: the event loop acquires with ``await gate.acquire()``, worker threads (stages
nested inside a program run) with ``gate.acquire_blocking(timeout)``.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class Overloaded(Exception):
    """A stage's queue is full: answer 503 with ``Retry-After``."""

    def __init__(self, stage: str, retry_after: int) -> None:
        super().__init__(f"the server is busy ({stage} stage at capacity); retry after {retry_after}s")
        self.stage = stage
        self.retry_after = retry_after


class DeadlineExceeded(Exception):
    """The request ran past ``request_deadline_s``: answer 504."""

    def __init__(self, deadline_s: float, stage: str | None = None) -> None:
        where = f" (waiting for or running the {stage} stage)" if stage else ""
        super().__init__(f"the request did not finish within its deadline of {deadline_s:g}s{where}")
        self.deadline_s = deadline_s
        self.stage = stage


class ClientGone(Exception):
    """The client that asked for this work has disconnected: stop before starting the next stage."""

    def __init__(self, stage: str | None = None) -> None:
        where = f" before the {stage} stage" if stage else ""
        super().__init__(f"the client disconnected; its request was abandoned{where}")
        self.stage = stage


#: How often a thread waiting in a stage queue looks whether its client is still there.
_GONE_POLL_S = 0.05


class _ThreadWaiter:
    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.granted = False


class StageGate:
    """A counting semaphore with a bounded FIFO wait queue, usable from the loop and from threads."""

    def __init__(
        self,
        name: str,
        limit: int,
        max_queue: int,
        on_change: Callable[[StageGate], None] | None = None,
        on_reject: Callable[[StageGate], None] | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.name = name
        self.limit = limit
        self.max_queue = max(0, max_queue)
        self._lock = threading.Lock()
        self._active = 0
        self._waiters: deque[Any] = deque()
        self._hold_ewma_s = 0.5
        self._on_change = on_change
        self._on_reject = on_reject

    # -------------------------------------------------------------------------------- inspection
    @property
    def active(self) -> int:
        return self._active

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def retry_after(self) -> int:
        """Seconds a rejected client should wait: the queue ahead of it at the observed hold time."""
        ahead = (self.waiting + self._active) / self.limit
        return max(1, min(60, math.ceil(self._hold_ewma_s * max(ahead, 1.0))))

    def record_hold(self, seconds: float) -> None:
        self._hold_ewma_s = 0.8 * self._hold_ewma_s + 0.2 * max(seconds, 0.0)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self)

    def _reject(self) -> Overloaded:
        if self._on_reject is not None:
            self._on_reject(self)
        return Overloaded(self.name, self.retry_after())

    # -------------------------------------------------------------------------------- acquire
    async def acquire(self) -> None:
        """Take a slot, waiting in the queue if there is room in it; raise Overloaded otherwise."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._active < self.limit and not self._waiters:
                self._active += 1
                fut = None
            elif len(self._waiters) >= self.max_queue:
                raise self._reject()
            else:
                fut = loop.create_future()
                self._waiters.append((loop, fut))
        self._changed()
        if fut is None:
            return
        try:
            await fut
        except BaseException:
            with self._lock:
                entry = (loop, fut)
                queued = entry in self._waiters
                if queued:
                    self._waiters.remove(entry)
            if queued:
                self._changed()
            elif fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over just as we gave up
            # else: the hand-over callback sees the cancelled future and releases
            raise

    def acquire_blocking(self, timeout: float | None, gone: threading.Event | None = None) -> None:
        """Thread-side acquire; raises Overloaded, or TimeoutError after ``timeout`` seconds in the queue,
        or :class:`ClientGone` as soon as ``gone`` is set (the request leaves the queue without running)."""
        if gone is not None and gone.is_set():
            raise ClientGone(self.name)
        with self._lock:
            if self._active < self.limit and not self._waiters:
                self._active += 1
                waiter = None
            elif len(self._waiters) >= self.max_queue:
                raise self._reject()
            else:
                waiter = _ThreadWaiter()
                self._waiters.append(waiter)
        self._changed()
        if waiter is None:
            return
        limit = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if limit is None else max(0.0, limit - time.monotonic())
            step = left if gone is None else (_GONE_POLL_S if left is None else min(left, _GONE_POLL_S))
            if waiter.event.wait(step):
                return
            abandoned = gone is not None and gone.is_set()
            if not abandoned and (left is None or left > 0):
                continue
            with self._lock:
                if waiter.granted:
                    if not abandoned:
                        return
                    granted = True
                else:
                    granted = False
                    self._waiters.remove(waiter)
            if granted:  # handed the slot just as the client left: pass it on
                self.release()
            else:
                self._changed()
            if abandoned:
                raise ClientGone(self.name)
            raise TimeoutError(f"waited {timeout:g}s for the {self.name} stage")

    def release(self) -> None:
        """Give a slot back, handing it to the oldest waiter if any (thread-safe)."""
        while True:
            with self._lock:
                if not self._waiters:
                    self._active = max(0, self._active - 1)
                    break
                waiter = self._waiters.popleft()
                if isinstance(waiter, _ThreadWaiter):
                    waiter.granted = True
                    waiter.event.set()
                    break
            loop, fut = waiter
            try:
                loop.call_soon_threadsafe(self._grant, fut)
                break
            except RuntimeError:  # that loop is closed: hand the slot to the next waiter
                continue
        self._changed()

    def _grant(self, fut: asyncio.Future[None]) -> None:
        if fut.done():  # the waiter gave up between hand-over and now
            self.release()
        else:
            fut.set_result(None)


class StageRunner:
    """Runs blocking callables on a bounded thread pool, each under the gate of its stage."""

    def __init__(self, gates: dict[str, StageGate], max_threads: int) -> None:
        self.gates = gates
        self.executor = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="rag-stage")

    async def run(
        self,
        stage: str | None,
        fn: Callable[..., T],
        *args: Any,
        timings: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> T:
        """``fn(*args, **kwargs)`` in a worker thread, holding ``stage``'s gate while it runs.

        Cancelling the awaiting task (a deadline) returns at once; the thread keeps its slot until
        it really finishes. Context variables (the request id) follow the call into the thread.
        ``timings["queue_ms"]`` (when given) receives the time spent waiting for the gate.
        """
        gate = self.gates.get(stage) if stage else None
        if gate is not None:
            waited = time.perf_counter()
            await gate.acquire()
            if timings is not None:
                timings["queue_ms"] = (time.perf_counter() - waited) * 1000
        ctx = contextvars.copy_context()

        def call() -> T:
            start = time.perf_counter()
            try:
                return ctx.run(fn, *args, **kwargs)
            finally:
                if gate is not None:
                    gate.record_hold(time.perf_counter() - start)
                    gate.release()

        try:
            cf: Future[T] = self.executor.submit(call)
        except BaseException:
            if gate is not None:
                gate.release()
            raise
        if gate is not None:
            cf.add_done_callback(lambda f: gate.release() if f.cancelled() else None)
        return await asyncio.wrap_future(cf)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
