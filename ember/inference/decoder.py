"""The one decoding loop for greedy and sampled generation: a running batch that rows join and leave between steps.

A row is first *prefilled* on its own (its prompt run through the model in chunks of at most `prefill_chunk`
tokens, into a cache of its own, so a long prompt never stalls the rows already decoding for more than one
chunk), its first token is chosen from the last prompt position, and it then *joins* the decoding batch: the
caches are left-padded to one width and stacked, with an attention mask that hides the padding and position ids
that count each row's own tokens. Every `step` feeds each decoding row its last token, picks each row's next
token with that row's own `Sampler`, and drops the rows that finished (their cache rows go, and columns that are
padding for every remaining row are trimmed).

`run_rows` is the batch view (add rows, step until all finish); a row's `on_text` callback is the stream view;
the server's scheduler adds rows between steps (continuous batching). Beam search is not decoded here (see
`Engine.generate_batch`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch

from ember.inference.completion import Completion, GenerationOptions, Row
from ember.inference.sampling import Constraint, Sampler, row_seed
from ember.models.forward import accepts_logits_to_keep, forward_accepts


class _Seq:
    """A row inside the decoder: its sampler, its own cache while prefilling, and what to feed next."""

    def __init__(self, row: Row, sampler: Sampler):
        self.row = row
        self.sampler = sampler
        self.cache: Any = None
        self.fed = 0  # tokens of this row already in a cache
        self.last: Optional[int] = None  # the token to feed at the next decoding step

    @property
    def remaining_prompt(self) -> int:
        return len(self.row.prompt) - self.fed


class Decoder:
    """A running batch over one causal LM. Not thread-safe: one thread adds rows and calls `step`."""

    def __init__(self, model: Any, tokenizer: Any, stop_ids: set[int], prefill_chunk: int = 512):
        self.model = model
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids)
        self.prefill_chunk = max(1, prefill_chunk)
        self.device = next(model.parameters()).device
        self._cache_arg = _cache_argument(model)
        self._keep_logits = accepts_logits_to_keep(model)
        self.prefilling: list[_Seq] = []
        self.decoding: list[_Seq] = []
        self.cache: Any = None
        self.mask: Optional[torch.Tensor] = None  # (rows, width): 1 = a real token, 0 = left padding
        self.steps = 0  # decoding steps run
        self.row_steps = 0  # rows fed over all decoding steps (mean batch = row_steps / steps)

    @property
    def rows(self) -> int:
        return len(self.prefilling) + len(self.decoding)

    def add(self, row: Row, options: GenerationOptions, seed: Optional[int] = None,
            constraint: Optional[Constraint] = None) -> None:
        """Queue `row` (sampled with `options`) for prefilling at the next `step`."""
        if not row.prompt:
            raise ValueError("a row needs at least one prompt token")
        if options.top_logprobs is not None and row.logprobs is None:
            row.logprobs = []
        if seed is None and options.seed is not None:
            seed = options.seed
        self.prefilling.append(_Seq(row, Sampler(options, row.prompt, self.tokenizer, seed, constraint)))

    def step(self) -> list[Row]:
        """Prefill (one chunk budget), then one decoding step; returns the rows that finished meanwhile."""
        finished: list[Row] = []
        with torch.inference_mode():
            self._drop_cancelled(finished)
            self._prefill(finished)
            if self.decoding:
                self._decode(finished)
        return finished

    # -- prefill -----------------------------------------------------------------------------------------------
    def _prefill(self, finished: list[Row]) -> None:
        budget = self.prefill_chunk
        # Shortest prompt first: a short request is not kept waiting behind a long prompt's chunks.
        for seq in sorted(self.prefilling, key=lambda s: s.remaining_prompt):
            if budget <= 0:
                break
            # A prompt with images goes in one piece: its image tokens and their features must meet in one forward.
            take = seq.remaining_prompt if seq.row.images is not None else min(seq.remaining_prompt, budget)
            budget -= take
            logits = self._prefill_chunk(seq, take)
            if seq.remaining_prompt:
                continue
            self.prefilling.remove(seq)
            self._accept(seq, logits[0])
            if seq.row.done:
                finished.append(seq.row)
            else:
                self._join(seq)

    def _prefill_chunk(self, seq: _Seq, take: int) -> torch.Tensor:
        from transformers import DynamicCache

        if seq.cache is None:
            seq.cache = DynamicCache()
        ids = torch.tensor([seq.row.prompt[seq.fed: seq.fed + take]], device=self.device)
        positions = torch.arange(seq.fed, seq.fed + take, device=self.device).unsqueeze(0)
        kwargs = {"logits_to_keep": 1} if self._keep_logits else {}
        images = seq.row.images
        if images is not None:
            kwargs.update({k: v.to(self.device) if hasattr(v, "to") else v for k, v in images.tensors.items()})
            if images.positions is not None:
                positions = images.positions.to(self.device)
        out = self.model(input_ids=ids, position_ids=positions, use_cache=True, **{self._cache_arg: seq.cache},
                         **kwargs)
        seq.fed += take
        return out.logits[:, -1]

    # -- decoding ----------------------------------------------------------------------------------------------
    def _decode(self, finished: list[Row]) -> None:
        rows = len(self.decoding)
        ids = torch.tensor([[s.last] for s in self.decoding], device=self.device)
        positions = torch.tensor([[s.fed + (s.row.images.offset if s.row.images else 0)] for s in self.decoding],
                                 device=self.device)
        self.mask = torch.cat([self.mask, self.mask.new_ones(rows, 1)], dim=1)
        padded = bool((self.mask == 0).any())
        out = self.model(input_ids=ids, attention_mask=self.mask if padded else None, position_ids=positions,
                         use_cache=True, **{self._cache_arg: self.cache})
        self.steps += 1
        self.row_steps += rows
        logits = out.logits[:, -1]
        greedy = [s.sampler.plain_greedy for s in self.decoding]
        picks = torch.argmax(logits, dim=-1).tolist() if any(greedy) else [None] * rows
        for i, seq in enumerate(self.decoding):
            seq.fed += 1
            if greedy[i]:
                seq.sampler.accept(picks[i])
                self._take(seq, picks[i], None)
            else:
                self._accept(seq, logits[i])
            if seq.row.done:
                finished.append(seq.row)
        self._leave([i for i, s in enumerate(self.decoding) if not s.row.done])

    def _accept(self, seq: _Seq, logits: torch.Tensor) -> None:
        token, logprob = seq.sampler.choose(logits)
        self._take(seq, token, logprob)

    def _take(self, seq: _Seq, token: int, logprob) -> None:
        seq.row.accept(token, self.stop_ids, self.tokenizer, logprob)
        seq.last = token

    # -- joining and leaving the batch -------------------------------------------------------------------------
    def _join(self, seq: _Seq) -> None:
        from transformers import DynamicCache

        mine = [(layer.keys, layer.values) for layer in seq.cache.layers]
        seq.cache = None
        width = seq.fed
        if not self.decoding:
            self.cache = DynamicCache(ddp_cache_data=mine)
            self.mask = torch.ones(1, width, dtype=torch.long, device=self.device)
            self.decoding = [seq]
            return
        old = self.mask.shape[1]
        full = max(old, width)
        layers = [(torch.cat([_pad_left(k, full - old), _pad_left(nk, full - width)]),
                   torch.cat([_pad_left(v, full - old), _pad_left(nv, full - width)]))
                  for (k, v), (nk, nv) in zip(self._layers(), mine, strict=True)]
        self.cache = DynamicCache(ddp_cache_data=layers)
        self.mask = torch.cat([_pad_left(self.mask, full - old, dim=1),
                               _pad_left(self.mask.new_ones(1, width), full - width, dim=1)])
        self.decoding.append(seq)

    def _leave(self, keep: list[int]) -> None:
        from transformers import DynamicCache

        if len(keep) == len(self.decoding):
            return
        self.decoding = [self.decoding[i] for i in keep]
        if not keep:
            self.cache = self.mask = None
            return
        index = torch.tensor(keep, device=self.device)
        mask = self.mask[index]
        start = int(torch.nonzero(mask.any(dim=0))[0])  # columns of padding for every remaining row go
        self.mask = mask[:, start:]
        self.cache = DynamicCache(ddp_cache_data=[(k[index, :, start:], v[index, :, start:])
                                                  for k, v in self._layers()])

    def _layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(layer.keys, layer.values) for layer in self.cache.layers]

    def _drop_cancelled(self, finished: list[Row]) -> None:
        for seq in [s for s in self.prefilling if s.row.cancel.is_set()]:
            self.prefilling.remove(seq)
            seq.row.cancelled()
            finished.append(seq.row)
        gone = [i for i, s in enumerate(self.decoding) if s.row.cancel.is_set()]
        for i in gone:
            self.decoding[i].row.cancelled()
            finished.append(self.decoding[i].row)
        if gone:
            self._leave([i for i in range(len(self.decoding)) if i not in gone])


def run_rows(decoder: Decoder, rows: Sequence[Row], options: GenerationOptions) -> list[Completion]:
    """The batch view: generate every row (each with its own options, else `options`) and return its result.

    Row `i` of a seeded call samples from `row_seed(seed, i)`: the rows differ from each other, and the call
    gives the same answers every time."""
    for i, row in enumerate(rows):
        if row.cancel.is_set():
            row.cancelled()
            continue
        opts = row.options or options
        decoder.add(row, opts, seed=None if opts.seed is None else row_seed(opts.seed, i))
    while decoder.rows:
        decoder.step()
    return [row.finish() for row in rows]


def _pad_left(t: torch.Tensor, n: int, dim: int = 2) -> torch.Tensor:
    if n <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _cache_argument(model: Any) -> str:
    """transformers ≥ 5.x renamed `past_key_values` to `cache`; pass whichever this model's forward takes."""
    return "cache" if forward_accepts(model, "cache") else "past_key_values"
