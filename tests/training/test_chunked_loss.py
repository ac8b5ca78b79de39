"""The chunked cross-entropy through the output embedding equals the plain logits path, and stands in for it
only where the model's logits are that projection."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from ember.training.chunked_loss import linear_cross_entropy, trained_rows


def _case(seed: int = 0):
    torch.manual_seed(seed)
    hidden = torch.randn(11, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(40, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 40, (11,))
    scale = torch.rand(11, dtype=torch.float64) / 7
    return hidden, weight, targets, scale


def test_loss_and_gradients_equal_the_logits_path_whatever_the_chunk():
    hidden, weight, targets, scale = _case()
    reference = (F.cross_entropy(hidden @ weight.T, targets, reduction="none") * scale).sum()
    reference.backward()
    expected = (reference.detach(), hidden.grad.clone(), weight.grad.clone())
    for chunk in (1, 3, 11, 64):
        hidden.grad = weight.grad = None
        loss = linear_cross_entropy(hidden, weight, targets, scale, torch.float64, chunk)
        (2.0 * loss).backward()  # the upstream gradient scales both
        assert torch.allclose(loss, expected[0], rtol=1e-6, atol=0), chunk
        assert torch.allclose(hidden.grad, 2 * expected[1], rtol=1e-6, atol=1e-9), chunk
        assert torch.allclose(weight.grad, 2 * expected[2], rtol=1e-6, atol=1e-9), chunk


def test_a_frozen_weight_gets_no_gradient_and_bf16_matches_autocast():
    hidden, weight, targets, scale = _case(1)
    weight = weight.detach().float()
    hidden = hidden.detach().float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = F.linear(hidden, weight)
    reference = (F.cross_entropy(logits.float(), targets, reduction="none") * scale.float()).sum()
    reference.backward()
    expected = hidden.grad.clone()
    hidden.grad = None
    loss = linear_cross_entropy(hidden, weight, targets, scale, torch.bfloat16, 4)
    loss.backward()
    assert weight.grad is None
    assert torch.allclose(loss, reference.detach(), rtol=1e-5)
    assert torch.allclose(hidden.grad, expected, rtol=1e-2, atol=1e-4)  # bf16 gradient casts, as autocast's


@pytest.mark.parametrize("rows, columns", [(0, 0), (4, 7), (3, 40), (11, 1), (1, 13), (64, 39)])
def test_a_frozen_fp32_head_on_a_cpu_goes_block_by_block_and_equals_the_logits_path(rows, columns, monkeypatch):
    """The online path: whatever the blocks (one column at a time, ragged last blocks, one block for everything), the
    loss and the rows' gradient are the logits path's; logits spread wide, so later blocks raise the running maxima."""
    from ember.training import chunked_loss

    hidden, weight, targets, scale = _case(2)
    targets[:3] = torch.tensor([0, 39, 13])  # the first and last columns, and the first of a second 13-wide block
    hidden = (8 * hidden).detach().requires_grad_()
    weight = weight.detach()
    reference = (F.cross_entropy(hidden @ weight.T, targets, reduction="none") * scale).sum()
    reference.backward()
    expected = hidden.grad.clone()
    blocks = []
    online = chunked_loss._online_cross_entropy
    monkeypatch.setattr(chunked_loss, "_online_cross_entropy",
                        lambda *args: blocks.append(args[-2:]) or online(*args))  # a spy on our own module
    hidden32 = hidden.detach().float().requires_grad_()
    loss = linear_cross_entropy(hidden32, weight.float(), targets, scale.float(), torch.float32, rows, columns)
    (2.0 * loss).backward()
    assert blocks == [(rows or chunked_loss.BLOCK_ROWS, columns or chunked_loss.BLOCK_VOCAB)]
    assert loss.dtype == torch.float32
    assert torch.allclose(loss.double(), reference.detach(), rtol=1e-6, atol=0)
    assert torch.allclose(hidden32.grad.double(), 2 * expected, rtol=1e-5, atol=1e-7)


def test_the_online_path_is_for_frozen_fp32_heads_on_a_cpu():
    from ember.training.chunked_loss import _online

    hidden, weight = torch.zeros(2, 4), torch.zeros(8, 4)
    assert _online(hidden, weight, torch.float32)
    assert not _online(hidden, weight.requires_grad_(), torch.float32)  # the head's gradient needs whole rows
    assert not _online(hidden, torch.zeros(8, 4), torch.bfloat16)  # half precision keeps the chunk path
    assert not _online(hidden.double(), torch.zeros(8, 4).double(), torch.float64)
    with pytest.raises(ValueError, match="frozen float32 head"):
        linear_cross_entropy(hidden, weight, torch.zeros(2, dtype=torch.long), torch.ones(2), torch.float32, online=True)


def test_both_paths_give_one_loss_for_a_frozen_fp32_head():
    hidden, weight, targets, scale = _case(3)
    hidden, weight, scale = hidden.detach().float().requires_grad_(), weight.detach().float(), scale.float()
    results = []
    for online in (True, False):
        hidden.grad = None
        loss = linear_cross_entropy(hidden, weight, targets, scale, torch.float32, 4, 6 if online else 0, online)
        loss.backward()
        results.append((loss.detach(), hidden.grad.clone()))
    (online_loss, online_grad), (chunk_loss, chunk_grad) = results
    with torch.no_grad():  # evaluation: the loss alone, without the gradient's products
        assert torch.equal(linear_cross_entropy(hidden, weight, targets, scale, torch.float32, 4, 6), online_loss)
    assert torch.allclose(online_loss, chunk_loss, rtol=1e-6, atol=0)
    assert torch.allclose(online_grad, chunk_grad, rtol=1e-5, atol=1e-6)  # fp32: ~1e-7 of the largest entries


def test_trained_rows_pick_the_targets_weights_and_step_count():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    labels = torch.tensor([[-100, -100, 5, 6], [-100, 7, -100, -100]])
    weights = torch.tensor([[0.0, 0.0, 0.5, 2.0], [0.0, 1.0, 0.0, 0.0]])
    rows, targets, scale = trained_rows(hidden, labels, weights, num_items=10)
    assert rows.squeeze(1).tolist() == [1.0, 2.0, 4.0]  # the hidden state BEFORE each trained token
    assert targets.tolist() == [5, 6, 7]
    assert scale.tolist() == pytest.approx([0.05, 0.2, 0.1])


def test_logits_that_are_not_the_projection_keep_the_plain_path():
    from ember.training.trainer import EmberTrainer

    torch.manual_seed(2)
    projection = torch.nn.Linear(8, 30, bias=False)
    hidden = torch.randn(1, 5, 8) * 8
    trainer = EmberTrainer.__new__(EmberTrainer)  # only the check's own state
    trainer._projection, positions = projection, torch.tensor([1, 2, 3])
    trainer.accelerator = SimpleNamespace(mixed_precision="no")
    with torch.no_grad():
        logits = projection(hidden[:, positions])
        assert trainer._logits_are_projected(hidden, logits, positions)
        assert not trainer._logits_are_projected(hidden, 30 * torch.tanh(logits / 30), positions)  # a final soft-cap
        assert not trainer._logits_are_projected(hidden, logits * 0.5, positions)  # a logit scale


def test_the_check_goes_a_chunk_of_rows_at_a_time_and_sees_the_last_one(monkeypatch):
    from ember.training import trainer as trainer_module
    from ember.training.trainer import EmberTrainer

    torch.manual_seed(3)
    projection = torch.nn.Linear(8, 30, bias=False).requires_grad_(False)
    hidden = torch.randn(2, 7, 8) * 8
    trainer = EmberTrainer.__new__(EmberTrainer)
    trainer._projection, positions, trainer._frozen_cast = projection, torch.tensor([1, 2, 4, 6]), None
    trainer.accelerator = SimpleNamespace(mixed_precision="no")
    monkeypatch.setattr(trainer_module, "CHUNK_ELEMENTS", 60)  # 2 rows of 30 logits per chunk: 4 chunks
    with torch.no_grad():
        logits = projection(hidden[:, positions])
        assert trainer._logits_are_projected(hidden, logits, positions)
        logits[1, 3] *= 0.5  # the last row of the last chunk
        assert not trainer._logits_are_projected(hidden, logits, positions)


def test_a_frozen_output_embedding_is_cast_once_per_run():
    from ember.training.trainer import EmberTrainer

    projection = torch.nn.Linear(8, 30, bias=False).requires_grad_(False)
    trainer = EmberTrainer.__new__(EmberTrainer)
    trainer._projection, trainer._frozen_cast = projection, None
    trainer.accelerator = SimpleNamespace(mixed_precision="bf16")
    first = trainer._projection_weight()
    assert first.dtype == torch.bfloat16 and torch.equal(first, projection.weight.to(torch.bfloat16))
    assert trainer._projection_weight() is first  # not cast again
    projection.weight.requires_grad_(True)  # a trained one is read as it is, every step
    assert trainer._projection_weight() is projection.weight


def test_a_training_run_uses_the_chunked_loss(tiny_run_config, monkeypatch):
    from ember.training import trainer as trainer_module
    from ember.training.run import train

    rows = []
    original = trainer_module.linear_cross_entropy

    def counting(hidden, *args, **kwargs):
        rows.append(hidden.shape[0])
        return original(hidden, *args, **kwargs)

    class Decoder(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.decoder = model.get_decoder()

    seen = Decoder()
    monkeypatch.setattr(trainer_module, "linear_cross_entropy", counting)  # a spy on our own module
    train(tiny_run_config("train.max_steps=2"), callbacks=[seen])
    assert len(rows) == 2 and all(n > 0 for n in rows)  # the first step (probed before it trains) and the next
    assert not seen.decoder._forward_hooks  # the hook that caught the last hidden state went with the run


def test_the_probe_computes_a_few_logits_without_gradients_or_random_numbers(tiny_run_config, monkeypatch):
    from ember.training import trainer as trainer_module
    from ember.training.run import train
    from ember.training.trainer import EmberTrainer

    # 2 rows of the tiny model's 49,152-token vocabulary: 3 positions fit in the probe's logits
    monkeypatch.setattr(trainer_module, "CHECK_ELEMENTS", 3 * 2 * 49152 + 5)
    seen, forwards = [], []
    check, probe = EmberTrainer._logits_are_projected, EmberTrainer._probe

    def checking(self, hidden, logits, positions):
        seen.append((tuple(logits.shape), logits.requires_grad, positions.tolist(), self._positions[:3].tolist()))
        return check(self, hidden, logits, positions)

    def probing(self, model, inputs):
        before = torch.get_rng_state()
        answer = probe(self, model, inputs)
        forwards.append((torch.equal(before, torch.get_rng_state()), model.training, answer))
        return answer

    monkeypatch.setattr(EmberTrainer, "_logits_are_projected", checking)  # spies on our own class
    monkeypatch.setattr(EmberTrainer, "_probe", probing)
    train(tiny_run_config("train.max_steps=3", "method.dropout=0.5", "data.packing=false"))
    assert len(seen) == 1 and len(forwards) == 1  # once per run
    (shape, grad, positions, first), (rng_kept, training, answer) = seen[0], forwards[0]
    assert shape == (2, 3, 49152) and not grad and positions == first
    assert rng_kept and training and answer  # dropout drew nothing; the model is back in training mode


def test_a_model_with_scaled_logits_trains_on_its_own_logits(tiny_run_config, tiny_model_config, tmp_path,
                                                             monkeypatch):
    """A model whose logits are not the projection of its last hidden state (Granite divides them by
    `logits_scaling`) keeps the plain loss from the first step on: the probe said no, and the chunked loss never
    runs."""
    from transformers import GraniteConfig, GraniteForCausalLM

    from ember.models.loading import load_tokenizer
    from ember.training import trainer as trainer_module
    from ember.training.run import train

    tokenizer = load_tokenizer(tiny_model_config)
    torch.manual_seed(0)
    config = GraniteConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, logits_scaling=4.0,
                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    GraniteForCausalLM(config).save_pretrained(tmp_path / "granite")
    tokenizer.save_pretrained(tmp_path / "granite")
    calls = []
    monkeypatch.setattr(trainer_module, "linear_cross_entropy", lambda *a, **k: calls.append(1))
    result = train(tiny_run_config("train.max_steps=2", f"model.name_or_path={tmp_path / 'granite'}",
                                   "model.random_init=false", "model.config_overrides={}"))
    assert calls == [] and torch.isfinite(torch.tensor(result.metrics["train_loss"]))
