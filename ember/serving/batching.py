"""A batching queue in front of one Engine: requests that arrive together share one `generate` call.

The worker takes the oldest waiting job, waits `window_s` for more, and runs every waiting job whose sampling
settings match it (up to `max_rows` sequences) as one left-padded batch; the rest wait for the next round. Jobs
may differ in prompt, `max_tokens` and stop strings (each row has its own). Sampling jobs with a `seed` always
run alone, so that a seed gives the same answer whatever else is being served.

Each job streams text through `on_text(choice_index, piece)` and ends with exactly one `on_done(result)`, where
`result` is a list of `Completion` (one per choice) or the exception that stopped it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

from ember.inference.completion import Completion, GenerationOptions, Row
from ember.inference.engine import Engine

log = logging.getLogger(__name__)


@dataclass
class Job:
    prompts: Sequence[list[int]]  # one per choice (n copies of the prompt for `n`)
    options: GenerationOptions
    on_done: Callable[[object], None]
    on_text: Optional[Callable[[int, str], None]] = None
    cancel: threading.Event = field(default_factory=threading.Event)
    limits: Optional[Sequence[int]] = None  # max new tokens per prompt (default: options.max_new_tokens for all)

    def batch_key(self) -> tuple:
        o = self.options
        if not o.do_sample:
            return ("greedy", o.repetition_penalty, o.num_beams)
        if o.seed is not None:
            return ("seeded", id(self))
        return ("sample", o.temperature, o.top_p, o.top_k, o.repetition_penalty, o.num_beams)


@dataclass
class BatchRecord:
    """What one batch did (for logs, tests and the benchmark)."""

    jobs: int
    rows: int
    seconds: float
    completions: list[Completion]


class BatchScheduler:
    def __init__(self, engine: Engine, max_rows: int = 8, window_s: float = 0.01):
        self.engine = engine
        self.max_rows = max(1, max_rows)
        self.window_s = window_s
        self.history: deque[BatchRecord] = deque(maxlen=256)
        self.totals = {"batches": 0, "rows": 0, "completion_tokens": 0}  # since start (shown by /health)
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name="ember-batcher", daemon=True)
        self._worker.start()

    def submit(self, job: Job) -> Job:
        with self._cond:
            if self._closed:
                raise RuntimeError("the batching queue is closed")
            self._waiting.append(job)
            self._cond.notify()
        return job

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._worker.join(timeout=30)

    # -- worker ------------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            group = self._next_group()
            if group is None:
                return
            self._run(group)

    def _next_group(self) -> Optional[list[Job]]:
        with self._cond:
            while not self._waiting and not self._closed:
                self._cond.wait()
            if self._closed and not self._waiting:
                return None
            deadline = time.monotonic() + self.window_s
            while sum(len(j.prompts) for j in self._waiting) < self.max_rows:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    break
                self._cond.wait(left)
            key = self._waiting[0].batch_key()
            group, rows, rest = [], 0, deque()
            while self._waiting:
                job = self._waiting.popleft()
                fits = not group or rows + len(job.prompts) <= self.max_rows
                if job.batch_key() == key and fits:
                    group.append(job)
                    rows += len(job.prompts)
                else:
                    rest.append(job)
            self._waiting = rest
            return group

    def _run(self, group: list[Job]) -> None:
        live = [j for j in group if not j.cancel.is_set()]
        for job in group:
            if job.cancel.is_set():
                job.on_done(_cancelled(job))
        if not live:
            return
        rows, owners = [], []
        for job in live:
            for index, prompt in enumerate(job.prompts):
                limit = job.limits[index] if job.limits else job.options.max_new_tokens
                rows.append(Row(list(prompt), limit, list(job.options.stop),
                                on_text=_bind(job.on_text, index), cancel=job.cancel))
                owners.append(job)
        started = time.monotonic()
        try:
            completions = self.engine.generate_rows(rows, live[0].options)
        except Exception as exc:  # the request handlers turn it into an error response
            log.exception("generation failed for a batch of %d jobs", len(live))
            for job in live:
                job.on_done(exc)
            return
        self.history.append(BatchRecord(len(live), len(rows), time.monotonic() - started, completions))
        self.totals["batches"] += 1
        self.totals["rows"] += len(rows)
        self.totals["completion_tokens"] += sum(c.completion_tokens for c in completions)
        for job in live:
            job.on_done([c for c, owner in zip(completions, owners, strict=True) if owner is job])


def _bind(on_text, index: int):
    if on_text is None:
        return None
    return lambda piece: on_text(index, piece)


def _cancelled(job: Job) -> list[Completion]:
    return [Completion("", len(p), 0, "cancelled") for p in job.prompts]
