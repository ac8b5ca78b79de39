"""The loss: per-message weights scale exactly their tokens, and gradient accumulation changes nothing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from ember.data.collate import PadCollator
from ember.data.conversation import Conversation, Message
from ember.data.render import IGNORE_INDEX
from ember.training.losses import causal_lm_loss, trained_positions
from ember.training.run import train

from .helpers import GradCapture, saved_tensors


@pytest.fixture(scope="module")
def renderer(smol_tokenizer):
    from ember.data.render import Renderer

    return Renderer(smol_tokenizer)


def runs(labels: list[int]) -> list[list[int]]:
    """Maximal runs of consecutive trained positions."""
    out: list[list[int]] = []
    for t, label in enumerate(labels):
        if label == IGNORE_INDEX:
            continue
        if out and out[-1][-1] == t - 1:
            out[-1].append(t)
        else:
            out.append([t])
    return out


def test_message_weight_scales_exactly_its_tokens(renderer):
    conv = Conversation([
        Message("user", "Name a colour."), Message("assistant", "Blue.", weight=0.5),
        Message("user", "Another one?"), Message("assistant", "Green, then red.", weight=2.0),
    ])
    weighted = renderer.encode(conv)
    plain = renderer.encode(Conversation([Message(m.role, m.content) for m in conv.messages]))
    assert weighted.input_ids == plain.input_ids and weighted.labels == plain.labels and plain.weights is None
    first, second = runs(plain.labels)  # one run of trained tokens per assistant message
    expected_weights = [0.0] * len(plain.labels)
    for t in first:
        expected_weights[t] = 0.5
    for t in second:
        expected_weights[t] = 2.0
    assert weighted.weights == expected_weights

    batch = PadCollator(pad_token_id=0)([{"input_ids": weighted.input_ids, "labels": weighted.labels,
                                           "loss_weights": weighted.weights}])
    torch.manual_seed(0)
    logits = torch.randn(1, len(plain.input_ids), 50)
    labels = batch["labels"] % 50  # small vocab for the random logits; IGNORE_INDEX stays negative below
    labels[batch["labels"] == IGNORE_INDEX] = IGNORE_INDEX

    # By hand: the label at position t is predicted from the logits at t - 1.
    def term(t: int) -> torch.Tensor:
        return -F.log_softmax(logits[0, t - 1], dim=-1)[labels[0, t]]

    by_hand = (0.5 * sum(term(t) for t in first) + 2.0 * sum(term(t) for t in second)) / (len(first) + len(second))
    loss = causal_lm_loss(logits, labels, batch["loss_weights"])
    torch.testing.assert_close(loss, by_hand, rtol=1e-6, atol=0)

    unweighted = causal_lm_loss(logits, labels)
    mean = sum(term(t) for t in first + second) / (len(first) + len(second))
    torch.testing.assert_close(unweighted, mean, rtol=1e-6, atol=0)
    ones = causal_lm_loss(logits, labels, (labels != IGNORE_INDEX).float())
    torch.testing.assert_close(ones, unweighted, rtol=0, atol=0)


def test_zero_weight_message_is_not_trained(renderer):
    conv = Conversation([Message("user", "Hi"), Message("assistant", "Hello.", weight=0.0),
                         Message("user", "Bye"), Message("assistant", "Goodbye.")])
    enc = renderer.encode(conv)
    assert len(runs(enc.labels)) == 1 and enc.weights is None


def test_num_items_divides_the_sum_of_the_whole_accumulation_step():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 6, 11), torch.randint(0, 11, (2, 6))
    labels[0, 3:] = IGNORE_INDEX
    per_token = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1),
                                ignore_index=IGNORE_INDEX, reduction="sum")
    torch.testing.assert_close(causal_lm_loss(logits, labels, num_items=40), per_token / 40)
    n = int(labels[:, 1:].ne(IGNORE_INDEX).sum())
    torch.testing.assert_close(causal_lm_loss(logits, labels), per_token / n)


def one_sgd_step(tiny_run_config, output: str, batch: int, accumulation: int):
    cfg = tiny_run_config(
        "method.type=full", "train.optim=sgd", "train.learning_rate=1.0", "train.max_grad_norm=0", "train.max_steps=1",
        f"train.per_device_train_batch_size={batch}", f"train.gradient_accumulation_steps={accumulation}",
        "train.save_strategy=no", f"output.dir={output}",
    )
    grads = GradCapture()
    result = train(cfg, callbacks=[grads])
    (step,) = grads.steps
    return result, step


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))


def test_batch_8_equals_batch_2_times_accumulation_4(tiny_run_config, tmp_path):
    """Same 8 samples of different lengths: one batch of 8 vs 4 accumulated micro-batches of 2 (fp32, full FT)."""
    from ember.training.prepare import prepare_data

    cfg = tiny_run_config()
    samples = prepare_data(cfg, progress=False).data.train
    counts = [s.trained_tokens for s in samples]
    assert len(samples) == 8 and len(set(counts)) > 3, counts
    # A per-micro-batch mean would weight tokens differently: only a sum over the whole step / all its tokens is exact.
    assert len({sum(counts[i:i + 2]) for i in range(0, 8, 2)}) > 1

    whole, g_whole = one_sgd_step(tiny_run_config, str(tmp_path / "b8"), batch=8, accumulation=1)
    accumulated, g_acc = one_sgd_step(tiny_run_config, str(tmp_path / "b2ga4"), batch=2, accumulation=4)

    loss_whole, loss_acc = whole.metrics["train_loss"], accumulated.metrics["train_loss"]
    assert abs(loss_whole - loss_acc) <= 1e-5 * abs(loss_whole), (loss_whole, loss_acc)
    assert g_whole.keys() == g_acc.keys()
    assert sum(g.numel() for g in g_whole.values()) == whole.trainable_params == whole.total_params
    for name in g_whole:
        assert relative_difference(g_acc[name], g_whole[name]) <= 1e-5, name
    everything = torch.cat([g.flatten() for g in g_whole.values()])
    assert everything.abs().sum() > 0
    assert relative_difference(torch.cat([g.flatten() for g in g_acc.values()]), everything) <= 1e-5

    # The SGD step (lr 1) moved the saved weights by exactly those gradients, identically in both runs.
    w_whole, w_acc = saved_tensors(tmp_path / "b8"), saved_tensors(tmp_path / "b2ga4")
    for name in w_whole:
        assert relative_difference(w_acc[name], w_whole[name]) <= 1e-6, name



def test_loss_at_trained_positions_equals_the_full_loss():
    torch.manual_seed(1)
    logits, labels = torch.randn(3, 9, 13), torch.randint(0, 13, (3, 9))
    labels[0, :5] = IGNORE_INDEX
    labels[1, 2:7] = IGNORE_INDEX
    labels[2, :] = IGNORE_INDEX
    weights = torch.rand(3, 9)
    positions = trained_positions(labels)
    # position t is kept when some row trains token t + 1: rows 0 (t ≥ 4) and 1 (t = 0, t ≥ 6)
    assert positions.tolist() == [0, 4, 5, 6, 7]
    for w, n in ((None, None), (weights, None), (weights, 50)):
        torch.testing.assert_close(causal_lm_loss(logits[:, positions], labels, w, n, positions=positions),
                                   causal_lm_loss(logits, labels, w, n), rtol=1e-6, atol=1e-7)


class LmHeadWidths(TrainerCallback):
    """Records how many positions reach the vocabulary projection in each training forward."""

    def __init__(self):
        self.widths: list[int] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        head = model.get_output_embeddings()
        head.register_forward_hook(lambda module, inputs, output: self.widths.append(inputs[0].shape[1]))


def test_training_projects_only_trained_positions_and_the_gradients_match(tiny_run_config, tmp_path):
    """The trainer passes `logits_to_keep`: the lm_head sees the first trained positions once (the probe before
    the first step, a million logits at most) and none in the step (the chunked loss projects the hidden states
    itself), and the step's gradients equal those of the full-logits loss computed by hand on the same 8 samples
    from the same initial weights."""
    from ember.training.chunked_loss import CHECK_ELEMENTS
    from ember.training.prepare import prepare_data
    from ember.models.loading import load_model, load_tokenizer

    cfg = tiny_run_config("method.type=full", "train.optim=sgd", "train.learning_rate=1.0", "train.max_grad_norm=0",
                          "train.max_steps=1", "train.per_device_train_batch_size=8", "data.packing=false")
    samples = prepare_data(cfg, progress=False).data.train
    assert len(samples) == 8
    widths, grads = LmHeadWidths(), GradCapture()
    train(cfg, callbacks=[widths, grads])

    batch = PadCollator(pad_token_id=0)([{"input_ids": s.input_ids, "labels": s.labels} for s in samples])
    kept = len(trained_positions(batch["labels"]))
    vocab = len(load_tokenizer(cfg.model))
    assert widths.widths == [min(kept, CHECK_ELEMENTS // (8 * vocab)), 0] and kept < batch["labels"].shape[1] - 1

    model = load_model(cfg.model, vocab_size=len(load_tokenizer(cfg.model)))
    model.config.use_cache = False
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    causal_lm_loss(logits, batch["labels"]).backward()
    (step,) = grads.steps
    assert step.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, p in model.named_parameters():
        assert relative_difference(step[name], p.grad) <= 1e-5, name
