"""Run a real tiny model's training forward (and Ember's loss) and add up what autograd keeps for backward."""

from __future__ import annotations

import contextlib

import torch

from ember.data.render import IGNORE_INDEX
from ember.models.segment_attention import segment_attention
from ember.training.chunked_loss import linear_cross_entropy, trained_rows
from ember.training.losses import causal_lm_loss, trained_positions


def batch_inputs(samples: int, length: int, packed: bool, vocab: int, pad_last: int = 0) -> dict[str, torch.Tensor]:
    """The planner's worst case: every sample `length` tokens long, every next token trained. `pad_last` shortens
    the last of several padded rows so that the batch carries a padding mask, as a real padded batch does (a
    single row is padded to its own length: no mask)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (samples, length), generator=g)
    labels = ids.clone()
    labels[:, 0] = IGNORE_INDEX  # the first token is never a target
    if packed:
        return {"input_ids": ids.reshape(1, -1), "labels": labels.reshape(1, -1),
                "position_ids": torch.arange(length).repeat(samples).unsqueeze(0)}
    mask = torch.ones_like(ids)
    if pad_last and samples > 1:
        mask[-1, length - pad_last:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def saved_bytes(model, inputs: dict[str, torch.Tensor], autocast: bool, chunked: bool = False) -> int:
    """Bytes of the distinct tensors (by storage) that autograd saves during the forward and the loss, parameters
    excluded: what the planner's `saved + autocast_copies` plus the loss's saved log-softmax must equal. A packed
    row runs as `ember train` runs it: sample by sample where the model can (ember.models.segment_attention).
    `chunked`: the loss is Ember's chunked one (EmberTrainer's "chunked" steps: no logits, the decoder's last
    hidden state projected by the loss), which keeps no log-softmax."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen.setdefault(storage.data_ptr(), storage.nbytes())
        return t

    inputs = dict(inputs)
    labels = inputs.pop("labels")
    positions = trained_positions(labels)
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    packed = "position_ids" in inputs
    segments = segment_attention(model) if packed else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), context, segments:
        if chunked:
            caught = []
            hook = model.get_decoder().register_forward_hook(lambda module, args, output: caught.append(output[0]))
            # the outputs live through the loss, as in the trainer: the head, called on no rows, keeps autocast's
            # copy of its weight until then (freed at once, its storage could be reused and counted as another)
            out = model(**inputs, logits_to_keep=positions[:0], use_cache=False)
            hook.remove()
            rows, targets, scale = trained_rows(caught[0], labels, None, None)
            head = model.get_output_embeddings().weight
            dtype = torch.bfloat16 if autocast else head.dtype
            if not head.requires_grad and head.dtype != dtype:
                head = head.detach().to(dtype)  # a frozen head: cast once, and held for the run by the trainer
                seen[head.untyped_storage().data_ptr()] = head.untyped_storage().nbytes()
            loss = linear_cross_entropy(rows, head, targets, scale, dtype)
        else:
            out = model(**inputs, logits_to_keep=positions, use_cache=False)
            loss = causal_lm_loss(out.logits, labels, positions=positions)
    assert loss.requires_grad
    return sum(seen.values())
