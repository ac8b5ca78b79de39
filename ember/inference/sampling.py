"""Choosing one row's next token from its logits: penalties, bias, constraint, then greedy or sampling.

Each row has its own `Sampler` and, when it samples, its own `torch.Generator`: what one request asks for (a
seed, a temperature, a bias, a JSON constraint) never reaches another row of the same batch, and a seeded row
draws the same tokens whatever else is being generated beside it. The order of the steps is transformers':
repetition penalty, then temperature, top-k and top-p. Log-probabilities are those of the model's own
distribution (the logits before any of these steps).
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any, Optional, Protocol

import torch

from ember.inference.completion import GenerationOptions, TokenLogprob


class Constraint(Protocol):
    """Limits which tokens may come next (e.g. only tokens that keep the answer valid JSON)."""

    def allowed(self) -> Optional[torch.Tensor]:
        """A bool mask over the vocabulary (True = allowed), or None when anything may follow."""

    def advance(self, token: int) -> None:
        """Record the token that was chosen."""


def row_seed(seed: int, index: int) -> int:
    """The generator seed of choice `index` of a request with `seed`: choices differ, each is repeatable."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class Sampler:
    def __init__(self, options: GenerationOptions, prompt: list[int], tokenizer: Any, seed: Optional[int] = None,
                 constraint: Optional[Constraint] = None):
        self.options = options
        self.tokenizer = tokenizer
        self.constraint = constraint
        self.seed = seed if seed is not None else secrets.randbits(63)
        self.generator: Optional[torch.Generator] = None
        self.context = set(prompt)  # for the repetition penalty: prompt and answer alike
        self.counts: dict[int, int] = {}  # answer tokens only, for presence/frequency penalties

    @property
    def plain_greedy(self) -> bool:
        """Nothing to do but argmax (so a batch of such rows can be decided at once)."""
        o = self.options
        return (not o.do_sample and o.repetition_penalty == 1.0 and not o.presence_penalty
                and not o.frequency_penalty and not o.logit_bias and o.top_logprobs is None and self.constraint is None)

    def choose(self, logits: torch.Tensor) -> tuple[int, Optional[TokenLogprob]]:
        """The next token for a 1-D row of logits, and its log-probability entry when asked for."""
        o = self.options
        logits = logits.float()
        logprobs = torch.log_softmax(logits, -1) if o.top_logprobs is not None else None
        scores = self._penalised(logits)
        if self.constraint is not None:
            allowed = self.constraint.allowed()
            if allowed is not None:  # rows past the tokenizer (padded vocabularies) are never allowed
                mask = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
                size = min(len(allowed), scores.shape[-1])
                mask[:size] = allowed[:size].to(scores.device)
                scores = scores.masked_fill(~mask, float("-inf"))
        token = self._sample(scores) if o.do_sample else int(torch.argmax(scores))
        self.accept(token)
        return token, (self._entry(token, logprobs) if logprobs is not None else None)

    def accept(self, token: int) -> None:
        self.context.add(token)
        self.counts[token] = self.counts.get(token, 0) + 1
        if self.constraint is not None:
            self.constraint.advance(token)

    # -- steps -------------------------------------------------------------------------------------------------
    def _penalised(self, scores: torch.Tensor) -> torch.Tensor:
        o = self.options
        changed = False
        if o.repetition_penalty != 1.0 and self.context:
            ids = torch.tensor(sorted(self.context), device=scores.device)
            picked = scores[ids]
            scores = scores.clone()
            changed = True
            scores[ids] = torch.where(picked < 0, picked * o.repetition_penalty, picked / o.repetition_penalty)
        if (o.presence_penalty or o.frequency_penalty) and self.counts:
            ids = torch.tensor(list(self.counts), device=scores.device)
            counts = torch.tensor(list(self.counts.values()), device=scores.device, dtype=scores.dtype)
            scores = scores if changed else scores.clone()
            changed = True
            scores[ids] -= counts * o.frequency_penalty + o.presence_penalty
        if o.logit_bias:
            ids = torch.tensor(list(o.logit_bias), device=scores.device)
            bias = torch.tensor(list(o.logit_bias.values()), device=scores.device, dtype=scores.dtype)
            scores = scores if changed else scores.clone()
            scores[ids] += bias
        return scores

    def _sample(self, scores: torch.Tensor) -> int:
        o = self.options
        scores = scores - scores.max()  # so that a tiny temperature cannot overflow
        scores = scores / o.temperature
        if 0 < o.top_k < scores.shape[-1]:
            kth = torch.topk(scores, o.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if o.top_p < 1.0:
            ordered, order = torch.sort(scores, descending=False)
            cumulative = ordered.softmax(-1).cumsum(-1)
            drop = cumulative <= 1 - o.top_p
            drop[-1] = False  # the most likely token always stays
            scores = scores.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
        probs = scores.softmax(-1)
        if self.generator is None:
            self.generator = torch.Generator(device=scores.device).manual_seed(self.seed)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def _entry(self, token: int, logprobs: torch.Tensor) -> TokenLogprob:
        top: list[tuple[int, str, float]] = []
        if self.options.top_logprobs:
            values, ids = torch.topk(logprobs, min(self.options.top_logprobs, logprobs.shape[-1]))
            top = [(int(i), self._text(int(i)), float(v)) for v, i in zip(values, ids, strict=True)]
        return TokenLogprob(token, self._text(token), float(logprobs[token]), top)

    def _text(self, token: int) -> str:
        return self.tokenizer.decode([token])
