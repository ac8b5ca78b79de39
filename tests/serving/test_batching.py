"""Continuous batching: jobs join the running batch between decoding steps, each row keeps its own settings."""

from __future__ import annotations

import threading
import time

import pytest

from ember.inference.completion import GenerationOptions
from ember.serving.batching import BatchScheduler, Job

QUESTIONS = ("a", "bb bb", "c c c c c c")


@pytest.fixture
def scheduler(tiny_engine):
    made: list[BatchScheduler] = []

    def make(max_rows: int = 8, prefill_chunk: int = 512) -> BatchScheduler:
        made.append(BatchScheduler(tiny_engine, max_rows=max_rows, prefill_chunk=prefill_chunk))
        return made[-1]

    yield make
    for s in made:
        s.close()


def run_jobs(scheduler: BatchScheduler, jobs: list[Job], timeout: float = 60, gap_s: float = 0.0) -> list[int]:
    """Submit `jobs` (`gap_s` apart) and wait for all; returns the job indices in the order they finished."""
    done = threading.Semaphore(0)
    order: list[int] = []
    for i, job in enumerate(jobs):
        inner = job.on_done
        job.on_done = lambda result, inner=inner, i=i: (inner(result), order.append(i), done.release())
        scheduler.submit(job)
        time.sleep(gap_s)
    for _ in jobs:
        assert done.acquire(timeout=timeout)
    return order


def prompt(engine, text: str) -> list[int]:
    return engine.prompt_ids([{"role": "user", "content": text}])


def test_jobs_with_different_settings_share_the_batch_and_get_their_alone_answers(tiny_engine, scheduler):
    queue = scheduler()
    results: dict[int, object] = {}
    jobs = [Job([prompt(tiny_engine, q)], GenerationOptions(max_new_tokens=12 + i),
                on_done=lambda r, i=i: results.__setitem__(i, r)) for i, q in enumerate(QUESTIONS)]
    seeded = GenerationOptions(max_new_tokens=12, do_sample=True, seed=3)
    jobs.append(Job([prompt(tiny_engine, "a")] * 2, seeded, on_done=lambda r: results.__setitem__(3, r)))
    run_jobs(queue, jobs)  # submitted one after another, they join the running batch
    assert queue.totals["peak_rows"] > 1 and queue.totals["row_steps"] > queue.totals["steps"]
    for i, q in enumerate(QUESTIONS):
        alone = tiny_engine.generate([{"role": "user", "content": q}], GenerationOptions(max_new_tokens=12 + i))
        assert [c.text for c in results[i]] == [alone.text]
    alone = BatchScheduler(tiny_engine)
    try:
        again: list = []
        run_jobs(alone, [Job([prompt(tiny_engine, "a")] * 2, seeded, on_done=again.append)])
    finally:
        alone.close()
    assert [c.text for c in results[3]] == [c.text for c in again[0]]  # the seed gave the same draws beside others
    assert results[3][0].text != results[3][1].text  # and the two choices are drawn independently


def test_rows_in_flight_never_exceed_max_rows_and_a_job_may_not_either(tiny_engine, scheduler):
    queue = scheduler(max_rows=3)
    p = prompt(tiny_engine, "hi")
    run_jobs(queue, [Job([p, p], GenerationOptions(max_new_tokens=4), on_done=lambda r: None) for _ in range(3)])
    assert queue.totals["peak_rows"] == 2  # a job of two waits until both its rows fit beside the running ones
    with pytest.raises(ValueError, match="1..3 rows"):
        queue.submit(Job([p] * 4, GenerationOptions(), on_done=lambda r: None))


def test_a_short_request_is_not_kept_waiting_behind_a_long_prompt(tiny_engine, scheduler):
    """The long prompt is prefilled 16 tokens per step; the short request arrives after it and finishes first."""
    queue = scheduler(prefill_chunk=16)
    long_prompt = prompt(tiny_engine, "word " * 1500)
    assert len(long_prompt) > 1500
    got: dict[str, list] = {}
    jobs = [Job([long_prompt], GenerationOptions(max_new_tokens=4), on_done=lambda r: got.__setitem__("long", r)),
            Job([prompt(tiny_engine, "hi")], GenerationOptions(max_new_tokens=4),
                on_done=lambda r: got.__setitem__("short", r))]
    assert run_jobs(queue, jobs) == [1, 0]
    alone = tiny_engine.generate([{"role": "user", "content": "word " * 1500}], GenerationOptions(max_new_tokens=4))
    assert got["long"][0].text == alone.text


def test_a_job_cancelled_while_waiting_never_runs(tiny_engine, scheduler):
    queue = scheduler()
    got: list = []
    job = Job([prompt(tiny_engine, "hi")], GenerationOptions(max_new_tokens=50), on_done=got.append)
    job.cancel.set()
    run_jobs(queue, [job])
    assert [c.finish_reason for c in got[0]] == ["cancelled"]
    assert list(queue.history) == [] and queue.totals["steps"] == 0


def test_a_job_that_cannot_start_fails_alone_and_the_worker_goes_on(tiny_engine, scheduler):
    queue = scheduler()

    def broken_constraint():
        raise RuntimeError("no grammar")

    got: dict[str, object] = {}
    jobs = [Job([prompt(tiny_engine, "hi")], GenerationOptions(max_new_tokens=3), constraint=broken_constraint,
                on_done=lambda r: got.__setitem__("broken", r)),
            Job([prompt(tiny_engine, "hi")], GenerationOptions(max_new_tokens=3),
                on_done=lambda r: got.__setitem__("fine", r))]
    run_jobs(queue, jobs)
    assert isinstance(got["broken"], RuntimeError)
    assert [c.text for c in got["fine"]] == [tiny_engine.generate([{"role": "user", "content": "hi"}],
                                                                  GenerationOptions(max_new_tokens=3)).text]
    assert queue.load == {"waiting": 0, "running": 0}
