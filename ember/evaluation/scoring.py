"""Log-likelihood of continuations given a prompt, with a Hugging Face causal LM, batched.

For each request the score of a continuation is the exact sum over its tokens of log p(token | prompt, previous
continuation tokens), computed in float32 from the model's logits. Prompt and continuation are tokenized separately and
concatenated, so the continuation's tokens are exactly `tokenizer(continuation, add_special_tokens=False)`.

Rows are `prompt + continuation[:-1]`: the last continuation token is only ever a target, never an input. Choices that
are single tokens (the answer letters) therefore share one row per prompt, so a 4-way question costs one forward pass.
Rows are right-padded (causal attention never looks at later padding) and sorted by length to waste little compute;
only the positions that predict continuation tokens go through the LM head (`logits_to_keep`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ember.errors import EmberError
from ember.models.forward import accepts_logits_to_keep


@dataclass(frozen=True)
class Request:
    prompt: str
    continuations: tuple[str, ...]
    add_special_tokens: bool = True  # whether the prompt gets the tokenizer's BOS etc.


@dataclass
class _Row:
    ids: list[int]
    targets: list[tuple[int, int, int, list[int]]]  # (request, choice, first predicting position, target ids)


def encode(tokenizer, request: Request) -> tuple[list[int], list[list[int]]]:
    prompt = tokenizer(request.prompt, add_special_tokens=request.add_special_tokens)["input_ids"]
    conts = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in request.continuations]
    for text, ids in zip(request.continuations, conts, strict=True):
        if not ids:
            raise EmberError(f"continuation {text!r} encodes to no tokens; every choice must be non-empty text")
    if not prompt:
        raise EmberError("an empty prompt has no context to score a continuation against")
    return prompt, conts


def prompt_length(tokenizer, request: Request) -> int:
    return len(tokenizer(request.prompt, add_special_tokens=request.add_special_tokens)["input_ids"])


def _rows(tokenizer, requests: Sequence[Request]) -> list[_Row]:
    rows: list[_Row] = []
    for r, request in enumerate(requests):
        prompt, conts = encode(tokenizer, request)
        by_ids: dict[tuple[int, ...], _Row] = {}
        for c, cont in enumerate(conts):
            ids = prompt + cont[:-1]
            row = by_ids.setdefault(tuple(ids), _Row(ids, []))
            row.targets.append((r, c, len(prompt) - 1, cont))
        rows.extend(by_ids.values())
    return rows


@torch.no_grad()
def score_requests(model, tokenizer, requests: Sequence[Request], batch_size: int = 8, progress: bool = True,
                   desc: str = "scoring") -> list[list[float]]:
    """Sum of token log-probabilities of every continuation of every request: `result[request][choice]`."""
    from tqdm.auto import tqdm

    rows = sorted(_rows(tokenizer, requests), key=lambda row: len(row.ids), reverse=True)
    scores = [[0.0] * len(req.continuations) for req in requests]
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    keep = accepts_logits_to_keep(model)
    was_training = model.training
    model.eval()
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    try:
        for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress or len(batches) < 2):
            width = len(batch[0].ids)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, row in enumerate(batch):
                input_ids[b, : len(row.ids)] = torch.tensor(row.ids)
                mask[b, : len(row.ids)] = 1
            # Only positions that predict a continuation token are projected onto the vocabulary.
            positions = sorted({start + t for row in batch for _, _, start, tgt in row.targets for t in range(len(tgt))})
            kwargs = {"logits_to_keep": torch.tensor(positions, device=device)} if keep else {}
            out = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False, **kwargs)
            logits = out.logits.float()
            column = {p: (i if keep else p) for i, p in enumerate(positions)}
            for b, row in enumerate(batch):
                for r, c, start, targets in row.targets:
                    cols = torch.tensor([column[start + t] for t in range(len(targets))], device=logits.device)
                    logprobs = torch.log_softmax(logits[b, cols], dim=-1)
                    picked = logprobs.gather(1, torch.tensor(targets, device=logits.device)[:, None])
                    scores[r][c] = float(picked.sum())
    finally:
        model.train(was_training)
    return scores
