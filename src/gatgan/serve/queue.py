"""One generation at a time, off the event loop, with a bounded wait.

A generator call already uses every core (torch's intra-op threads), so running two at once only
makes both slower and doubles the memory; one worker thread keeps the event loop free to answer
/health, the page and the queue's refusals while a batch is generated.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """More requests are waiting than the server accepts; the client should retry later."""


class GenerationQueue:
    """`await queue.run(fn, *args)` runs fn on the single worker thread once the requests ahead of it
    are done, or raises QueueFull at once when `max_waiting` requests are already waiting.
    Bookkeeping happens on the event loop's thread only, so it needs no lock."""

    def __init__(self, max_waiting: int) -> None:
        self.max_waiting = max_waiting
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gatgan-generate")
        self._admitted = 0  # generating (at most one) + waiting
        self.completed = 0

    @property
    def waiting(self) -> int:
        return max(self._admitted - 1, 0)

    @property
    def busy(self) -> bool:
        return self._admitted > 0

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        if self._admitted > self.max_waiting:
            raise QueueFull(f"{self.waiting} requests are already waiting (the limit is {self.max_waiting})")
        loop = asyncio.get_running_loop()
        self._admitted += 1
        job = self._executor.submit(functools.partial(fn, *args))
        # Released when the work is really over: a client that disconnects cancels its await, not
        # the generation already running on the worker.
        job.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release))
        return await asyncio.wrap_future(job)

    def _release(self) -> None:
        self._admitted -= 1
        self.completed += 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
