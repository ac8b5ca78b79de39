"""Continuous batching in front of one Engine: requests join the running batch between decoding steps.

One worker thread owns the model. Each turn it admits waiting jobs (oldest first, a whole job at a time) while
fewer than `max_rows` rows are in flight, then runs one `Decoder.step`: new rows are prefilled (at most
`prefill_chunk` prompt tokens per step, shortest prompt first, so a long prompt does not hold up a short one)
and every row already decoding gets its next token. Rows leave as they finish; a job ends when all its rows have.

Every row samples with its own settings and its own random generator (choice `i` of a seeded job draws from
`row_seed(seed, i)`), so requests with different temperatures, seeds, biases or JSON constraints share one batch
without reaching into each other. A job may hold at most `max_rows` rows (the API refuses bigger requests).

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

from ember.inference.completion import Completion, GenerationOptions, PromptImages, Row, TokenLogprob
from ember.inference.engine import Engine
from ember.inference.sampling import Constraint, row_seed

log = logging.getLogger(__name__)


@dataclass
class Job:
    prompts: Sequence[list[int]]  # one per choice (n copies of the prompt for `n`)
    options: GenerationOptions
    on_done: Callable[[object], None]
    on_text: Optional[Callable[[int, str], None]] = None
    cancel: threading.Event = field(default_factory=threading.Event)
    limits: Optional[Sequence[int]] = None  # max new tokens per prompt (default: options.max_new_tokens for all)
    on_logprobs: Optional[Callable[[int, list[TokenLogprob]], None]] = None
    constraint: Optional[Callable[[], Constraint]] = None  # makes one constraint per row (e.g. JSON)
    images: Optional[PromptImages] = None  # the prompts' images (chat with an image-text model: n copies of one prompt)
    submitted: float = field(default_factory=time.monotonic)


@dataclass
class JobRecord:
    """What one job got (for logs, tests and the benchmark)."""

    rows: int
    seconds: float  # from submission to its last row finishing
    completions: list[Completion]


class _Running:
    def __init__(self, job: Job):
        self.job = job
        self.rows: list[Row] = []
        self.done: dict[int, Completion] = {}


class BatchScheduler:
    def __init__(self, engine: Engine, max_rows: int = 8, prefill_chunk: int = 512):
        self.engine = engine
        self.max_rows = max(1, max_rows)
        self.prefill_chunk = prefill_chunk
        self.history: deque[JobRecord] = deque(maxlen=256)
        # since start (shown by /health): mean batch size = row_steps / steps
        self.totals = {"jobs": 0, "rows": 0, "steps": 0, "row_steps": 0, "completion_tokens": 0, "peak_rows": 0}
        self._waiting: deque[Job] = deque()
        self._owner: dict[int, tuple[_Running, int]] = {}  # id(row) -> its job and choice index
        self._cond = threading.Condition()
        self._closed = False
        self._decoder = engine.decoder(prefill_chunk)
        self._worker = threading.Thread(target=self._loop, name="ember-batcher", daemon=True)
        self._worker.start()

    def submit(self, job: Job) -> Job:
        if not 1 <= len(job.prompts) <= self.max_rows:
            raise ValueError(f"a job holds 1..{self.max_rows} rows, got {len(job.prompts)}")
        with self._cond:
            if self._closed:
                raise RuntimeError("the batching queue is closed")
            self._waiting.append(job)
            self._cond.notify()
        return job

    @property
    def load(self) -> dict[str, int]:
        return {"waiting": len(self._waiting), "running": self._decoder.rows}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._worker.join(timeout=30)

    # -- worker ------------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._decoder.rows and not self._closed:
                    self._cond.wait()
                if self._closed:
                    self._fail_all(RuntimeError("the server is shutting down"))
                    return
                self._admit()
            if not self._decoder.rows:
                continue
            try:
                with self.engine.lock:
                    finished = self._decoder.step()
            except Exception as exc:  # the request handlers turn it into an error response
                log.error("generation failed for %d rows: %s: %s", self._decoder.rows, type(exc).__name__, exc,
                          exc_info=log.isEnabledFor(logging.DEBUG))
                self._fail_all(exc)
                self._decoder = self.engine.decoder(self.prefill_chunk)
                continue
            self.totals["steps"] = self._decoder.steps
            self.totals["row_steps"] = self._decoder.row_steps
            for row in finished:
                self._finish(row)

    def _admit(self) -> None:
        while self._waiting and self._decoder.rows + len(self._waiting[0].prompts) <= self.max_rows:
            job = self._waiting.popleft()
            if job.cancel.is_set():
                job.on_done([Completion("", len(p), 0, "cancelled") for p in job.prompts])
                continue
            try:
                self._start(job)
            except Exception as exc:  # e.g. its constraint could not be built: that job fails, no other
                log.error("could not start a job: %s: %s", type(exc).__name__, exc)
                self._decoder.prefilling = [s for s in self._decoder.prefilling if s.row.cancel is not job.cancel]
                for key in [k for k, (r, _) in self._owner.items() if r.job is job]:
                    del self._owner[key]
                job.on_done(exc)
            self.totals["peak_rows"] = max(self.totals["peak_rows"], self._decoder.rows)

    def _start(self, job: Job) -> None:
        running = _Running(job)
        o = job.options
        for index, prompt in enumerate(job.prompts):
            limit = job.limits[index] if job.limits else o.max_new_tokens
            row = Row(list(prompt), limit, list(o.stop), on_text=_bind(job.on_text, index), cancel=job.cancel,
                      on_logprobs=_bind(job.on_logprobs, index), images=job.images)
            running.rows.append(row)
            self._owner[id(row)] = (running, index)
            self._decoder.add(row, o, seed=None if o.seed is None else row_seed(o.seed, index),
                              constraint=job.constraint() if job.constraint else None)

    def _finish(self, row: Row) -> None:
        running, index = self._owner.pop(id(row))
        running.done[index] = row.finish()
        if len(running.done) < len(running.rows):
            return
        completions = [running.done[i] for i in range(len(running.rows))]
        self.history.append(JobRecord(len(running.rows), time.monotonic() - running.job.submitted, completions))
        self.totals["jobs"] += 1
        self.totals["rows"] += len(completions)
        self.totals["completion_tokens"] += sum(c.completion_tokens for c in completions)
        running.job.on_done(completions)

    def _fail_all(self, exc: BaseException) -> None:
        jobs = {id(r.job): r.job for r, _ in self._owner.values()}
        self._owner.clear()
        for job in [*jobs.values(), *self._waiting]:
            job.on_done(exc)
        self._waiting.clear()


def _bind(callback, index: int):
    if callback is None:
        return None
    return lambda value: callback(index, value)
