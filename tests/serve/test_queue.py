"""The generation queue: one generation at a time on a worker thread, a bounded wait (503 beyond
it), and a slot held until the work is really over, even when the client that asked for it is gone.
Synchronised by Events and polling with a deadline, never by sleeping and hoping."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time

import httpx
import pytest

from gatgan.serve import ServeLimits, create_app
from gatgan.serve.queue import GenerationQueue, QueueFull

TIMEOUT_S = 10  # for anything that should take milliseconds: a bug fails the test instead of hanging it


async def until(condition, what: str, timeout: float = TIMEOUT_S) -> None:
    """Polls `condition` (a function, or a coroutine function) while letting the event loop run other
    tasks, until it is true; fails after `timeout` seconds saying `what` never happened."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting until {what}"
        await asyncio.sleep(0.002)


class Jobs:
    """Plain functions for the queue that record which ran, in what order, on which thread and how many
    at once; a gated job blocks (on its worker thread) until `gate` is set."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self._lock = threading.Lock()
        self._running = 0
        self.most_at_once = 0
        self.started: list[str] = []
        self.finished: list[str] = []
        self.threads: set[int] = set()

    def job(self, name: str, gated: bool = False):
        def run() -> str:
            with self._lock:
                self._running += 1
                self.most_at_once = max(self.most_at_once, self._running)
                self.started.append(name)
                self.threads.add(threading.get_ident())
            try:
                if gated:
                    assert self.gate.wait(TIMEOUT_S), "the gate was never opened"
                return name
            finally:
                with self._lock:
                    self._running -= 1
                    self.finished.append(name)

        return run


def run_with_queue(max_waiting: int, scenario) -> Jobs:
    """Runs `await scenario(queue, jobs)` in a fresh event loop; the gate opens and the worker stops
    whatever happens, so a failing test cannot leave a thread blocked."""
    jobs = Jobs()

    async def main() -> None:
        queue = GenerationQueue(max_waiting)
        try:
            await scenario(queue, jobs)
        finally:
            jobs.gate.set()
            queue.shutdown()

    asyncio.run(main())
    return jobs


async def start_blocked(queue: GenerationQueue, jobs: Jobs, name: str = "running") -> asyncio.Task:
    """A task whose job is generating (on the worker) and stays so until the gate opens."""
    task = asyncio.create_task(queue.run(jobs.job(name, gated=True)))
    await until(lambda: name in jobs.started, f"{name} starts")
    return task


def counts(queue: GenerationQueue) -> tuple[bool, int, int]:
    return queue.busy, queue.waiting, queue.completed


# ---------------------------------------------------------------------------------- the queue alone
def test_jobs_run_one_at_a_time_in_order_off_the_event_loop():
    """Jobs submitted while one blocks must wait for it (a second worker would start them at once)."""
    loop_threads = []

    async def scenario(queue, jobs):
        loop_threads.append(threading.get_ident())
        first = await start_blocked(queue, jobs, "a")
        rest = [asyncio.create_task(queue.run(jobs.job(name))) for name in "bcde"]
        await until(lambda: queue.waiting == 4 or len(jobs.started) > 1, "4 wait")
        assert jobs.started == ["a"], "jobs started while another was generating"
        jobs.gate.set()
        assert await asyncio.gather(first, *rest) == list("abcde")
        assert await queue.run(pow, 2, 10) == 1024  # arguments reach the function

    jobs = run_with_queue(8, scenario)
    assert jobs.most_at_once == 1
    assert jobs.started == jobs.finished == list("abcde")
    assert loop_threads[0] not in jobs.threads


def test_a_full_queue_refuses_at_once_and_admits_again_when_it_drains():
    async def scenario(queue, jobs):
        assert counts(queue) == (False, 0, 0)
        running = await start_blocked(queue, jobs)
        waiting = [asyncio.create_task(queue.run(jobs.job(name))) for name in ("w1", "w2")]
        await until(lambda: queue.waiting == 2, "2 wait")
        assert counts(queue) == (True, 2, 0)
        with pytest.raises(QueueFull, match=r"2 requests are already waiting \(the limit is 2\)"):
            await asyncio.wait_for(queue.run(jobs.job("refused")), timeout=1)  # at once, not after the others
        assert counts(queue) == (True, 2, 0)
        jobs.gate.set()
        assert await asyncio.gather(running, *waiting) == ["running", "w1", "w2"]
        assert counts(queue) == (False, 0, 3)  # released before the answer reaches the awaiting request
        assert await queue.run(jobs.job("after")) == "after"
        assert counts(queue) == (False, 0, 4)

    jobs = run_with_queue(2, scenario)
    assert "refused" not in jobs.started


def test_a_cancelled_request_keeps_its_slot_until_its_generation_finishes():
    """A client that disconnects cancels its await, not the generation on the worker: until that
    generation really ends the server is as loaded as before, so the slot must stay taken."""

    async def scenario(queue, jobs):
        running = await start_blocked(queue, jobs)
        queued = asyncio.create_task(queue.run(jobs.job("queued")))
        await until(lambda: queue.waiting == 1, "1 waits")
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert counts(queue) == (True, 1, 0) and jobs.finished == []
        with pytest.raises(QueueFull):
            await queue.run(jobs.job("refused"))
        jobs.gate.set()
        assert await queued == "queued"
        assert jobs.finished == ["running", "queued"]
        assert counts(queue) == (False, 0, 2)

    run_with_queue(1, scenario)


def test_a_cancelled_request_that_was_still_waiting_never_runs_and_frees_its_slot():
    """Nobody will read its images: it is dropped from the queue instead of generated."""

    async def scenario(queue, jobs):
        running = await start_blocked(queue, jobs)
        dropped = asyncio.create_task(queue.run(jobs.job("dropped")))
        await until(lambda: queue.waiting == 1, "1 waits")
        dropped.cancel()
        await until(lambda: queue.waiting == 0, "none waits")
        admitted = asyncio.create_task(queue.run(jobs.job("admitted")))  # the freed slot is usable
        await until(lambda: queue.waiting == 1, "1 waits")
        jobs.gate.set()
        assert await asyncio.gather(running, admitted) == ["running", "admitted"]

    jobs = run_with_queue(1, scenario)
    assert jobs.started == ["running", "admitted"]


# ---------------------------------------------------------------------------------- through the app
GENERATE = {"class": "grey", "seeds": [1, 2]}


@pytest.fixture
def gated_app(gat, monkeypatch):
    """An app with max_waiting=1 whose generations block until the returned Event is set (patched on
    the model after create_app, whose start-up generation must not block)."""
    app = create_app(gat, ServeLimits(max_waiting=1))
    gate = threading.Event()
    images = gat.sampler.images

    def gated_images(*args, **kwargs):
        assert gate.wait(TIMEOUT_S), "the gate was never opened"
        return images(*args, **kwargs)

    monkeypatch.setattr(gat.sampler, "images", gated_images)
    yield app, gate
    gate.set()
    app.state.queue.shutdown()


def test_requests_beyond_the_wait_limit_get_503_while_health_still_answers(gated_app, check_error):
    app, gate = gated_app

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve", timeout=TIMEOUT_S) as client:
            async def health() -> dict:
                return (await client.get("/health")).json()

            generating = asyncio.create_task(client.post("/generate", json=GENERATE))
            # /health answers while the generation blocks its worker: the event loop is free
            await until(lambda: health_is(health, busy=True, waiting=0), "/health says busy")
            queued = asyncio.create_task(client.post("/generate", json=GENERATE))
            await until(lambda: health_is(health, busy=True, waiting=1), "/health says 1 waits")
            refused = [await client.post("/generate", json=GENERATE),
                       await client.post("/interpolate", json={"class": 0, "seeds": [1, 2], "steps": 3})]
            assert await health() == {"status": "ok", "busy": True, "waiting": 1, "completed": 0}
            gate.set()
            served = await asyncio.gather(generating, queued)
            served.append(await client.post("/generate", json=GENERATE))  # admitted again once drained
            assert await health() == {"status": "ok", "busy": False, "waiting": 0, "completed": 3}
            return refused + served

    *refused, first, second, after = asyncio.run(scenario())
    for response in refused:
        check_error(response, 503, None, "busy", "1 requests are already waiting (the limit is 1)", "retry")
        assert response.headers["retry-after"] == "1"
    for response in (first, second, after):
        assert response.status_code == 200, response.text
        assert response.content == first.content  # waiting changes nothing in the images
    assert [image["seed"] for image in first.json()["images"]] == GENERATE["seeds"]


async def health_is(health, **expected) -> bool:
    answer = await health()
    return all(answer[key] == value for key, value in expected.items())
