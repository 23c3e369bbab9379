"""JobQueue: FIFO, bounded wake-ups, fan-out as far as jobs suspend, clean close."""

from __future__ import annotations

import asyncio

from exospherehost.runtime.jobqueue import JobQueue


async def test_never_suspending_jobs_run_on_one_consumer() -> None:
    q: JobQueue[int] = JobQueue()
    ran: dict[int, list[int]] = {}

    async def consumer(n: int) -> None:
        while (job := await q.get()) is not None:
            ran.setdefault(n, []).append(job)

    tasks = [asyncio.create_task(consumer(n)) for n in range(8)]
    await asyncio.sleep(0)  # all waiting
    for i in range(100):
        q.put(i)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    q.close()
    await asyncio.gather(*tasks)
    assert sorted(j for jobs in ran.values() for j in jobs) == list(range(100))
    assert len(ran) <= 2, ran  # no stampede of 8 consumers for non-suspending work


async def test_suspending_jobs_fan_out_to_the_whole_pool() -> None:
    q: JobQueue[int] = JobQueue()
    gate = asyncio.Event()
    all_running = asyncio.Event()
    running = 0
    peak = 0

    async def consumer() -> None:
        nonlocal running, peak
        while (job := await q.get()) is not None:
            running += 1
            peak = max(peak, running)
            if peak == 5:
                all_running.set()
            await gate.wait()
            running -= 1
            assert job >= 0

    tasks = [asyncio.create_task(consumer()) for _ in range(5)]
    for i in range(20):
        q.put(i)
    await asyncio.wait_for(all_running.wait(), 5)
    gate.set()
    q.close()
    await asyncio.gather(*tasks)
    assert peak == 5 and len(q) == 0


async def test_cancelled_waiter_passes_its_wake_up_on() -> None:
    q: JobQueue[int] = JobQueue()
    got: list[int] = []

    async def consumer() -> None:
        while (job := await q.get()) is not None:
            got.append(job)

    a = asyncio.create_task(consumer())
    b = asyncio.create_task(consumer())
    await asyncio.sleep(0)
    q.put(1)  # wakes a
    a.cancel()
    await asyncio.gather(a, return_exceptions=True)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    q.close()
    await b
    assert got == [1]
    assert q.drain() == []
