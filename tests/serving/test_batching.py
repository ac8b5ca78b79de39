"""The batching queue: requests that arrive together share one generate call; sampling settings never mix."""

from __future__ import annotations

import threading

import pytest

from ember.inference.engine import GenerationOptions
from ember.serving.batching import BatchScheduler, Job

QUESTIONS = ("a", "bb bb", "c c c c c c")


@pytest.fixture
def scheduler(tiny_engine):
    """A queue with a long window (0.3 s), so jobs submitted back to back surely meet."""
    made: list[BatchScheduler] = []

    def make(max_rows: int = 8) -> BatchScheduler:
        made.append(BatchScheduler(tiny_engine, max_rows=max_rows, window_s=0.3))
        return made[-1]

    yield make
    for s in made:
        s.close()


def run_jobs(scheduler: BatchScheduler, jobs: list[Job], timeout: float = 60) -> None:
    done = threading.Semaphore(0)
    for job in jobs:
        inner = job.on_done
        job.on_done = lambda result, inner=inner: (inner(result), done.release())
        scheduler.submit(job)
    for _ in jobs:
        assert done.acquire(timeout=timeout)


def prompt(engine, text: str) -> list[int]:
    return engine.prompt_ids([{"role": "user", "content": text}])


def test_jobs_arriving_together_run_as_one_batch_with_their_own_answers(tiny_engine, scheduler):
    queue = scheduler()
    results: dict[int, object] = {}
    jobs = [Job([prompt(tiny_engine, q)], GenerationOptions(max_new_tokens=4 + i),
                on_done=lambda r, i=i: results.__setitem__(i, r)) for i, q in enumerate(QUESTIONS)]
    jobs.append(Job([prompt(tiny_engine, "a")], GenerationOptions(max_new_tokens=4, do_sample=True, seed=3),
                    on_done=lambda r: results.__setitem__(3, r)))
    run_jobs(queue, jobs)
    assert [(r.jobs, r.rows) for r in queue.history] == [(3, 3), (1, 1)]  # the seeded sampling job runs alone
    for i, q in enumerate(QUESTIONS):
        alone = tiny_engine.generate([{"role": "user", "content": q}], GenerationOptions(max_new_tokens=4 + i))
        assert [c.text for c in results[i]] == [alone.text]


def test_max_rows_splits_big_groups(tiny_engine, scheduler):
    queue = scheduler(max_rows=3)
    p = prompt(tiny_engine, "hi")
    run_jobs(queue, [Job([p, p], GenerationOptions(max_new_tokens=2), on_done=lambda r: None) for _ in range(3)])
    assert [r.rows for r in queue.history] == [2, 2, 2]


def test_a_job_cancelled_while_waiting_never_runs(tiny_engine, scheduler):
    queue = scheduler()
    got: list = []
    job = Job([prompt(tiny_engine, "hi")], GenerationOptions(max_new_tokens=50), on_done=got.append)
    job.cancel.set()
    run_jobs(queue, [job])
    assert [c.finish_reason for c in got[0]] == ["cancelled"]
    assert list(queue.history) == []
