"""FIFO of jobs for a pool of executor coroutines, woken one at a time.

asyncio.Queue wakes one waiting consumer per put: a batch of 100 states wakes every idle
executor, although one executor runs a batch of never-suspending nodes to the end on its
own. Here a put wakes a consumer only if none is already on its way, and a consumer that
takes a job wakes the next one only if jobs remain — so executors fan out exactly as far
as the nodes' awaits make them (up to the pool size), at one wake-up per step."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class JobQueue(Generic[T]):
    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._waking = 0  # consumers woken and not yet running
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        self._items.append(item)
        if not self._waking:
            self._wake_one()

    def close(self) -> None:
        """No more jobs: consumers get None once the queue is empty."""
        self._closed = True
        while self._waiters:
            self._wake_one()

    def drain(self) -> list[T]:
        items = list(self._items)
        self._items.clear()
        return items

    async def get(self) -> T | None:
        while not self._items:
            if self._closed:
                return None
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._waking -= 1
                    self._wake_one()  # pass the wake-up on
                else:
                    self._waiters.remove(fut)
                raise
            self._waking -= 1
        item = self._items.popleft()
        if self._items and not self._waking:
            self._wake_one()  # someone else may start the next job while this one runs
        return item

    def _wake_one(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                self._waking += 1
                return
