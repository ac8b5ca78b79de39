"""The injected generation callable every generating eval uses, and a batched, progress-reporting way to call it.

Eval code never loads a generation engine itself: the CLI builds a `GenerateFn` (greedy) and passes it in, so tests
can pass a plain function with fixed answers.
"""

from __future__ import annotations

from typing import Callable

# A batch of conversations (lists of {"role", "content"} messages) → one answer string each, decoded greedily.
GenerateFn = Callable[[list[list[dict]]], list[str]]


def generate_all(generate: GenerateFn, conversations: list[list[dict]], batch_size: int = 8, desc: str = "generating",
                 progress: bool = True) -> list[str]:
    from tqdm.auto import tqdm

    answers: list[str] = []
    starts = range(0, len(conversations), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=not progress or len(starts) < 2):
        batch = conversations[start : start + batch_size]
        out = list(generate(batch))
        if len(out) != len(batch):
            raise RuntimeError(f"the generate function returned {len(out)} answers for {len(batch)} conversations")
        answers.extend(out)
    return answers
