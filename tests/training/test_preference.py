"""Preference training: the losses equal TRL 1.16's on the same batch, DPO starts at exactly log 2 with zero rewards,
gradient accumulation and packing change nothing, LoRA / QLoRA / full / precomputed references all train.

TRL is a test-only oracle: it is pip-installed once (--no-deps --target) into $EMBER_CACHE/peers/trl-1.16.0, never
into the project venv, and runs in a subprocess (tests/training/trl_oracle.py) on the batches Ember built.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ember.config.schema import PreferenceConfig
from ember.training.preference import PreferenceTrainer
from ember.training.preference_losses import OBJECTIVES
from ember.training.run import train

from .helpers import GradCapture, logged_losses, saved_tensors, varlen_stand_in

ROOT = Path(__file__).resolve().parents[2]
PAIRS = ROOT / "examples" / "data" / "dpo.jsonl"
TRL = "trl==1.16.0"


def kto_records(tmp_path: Path) -> Path:
    """The bundled pairs unpaired: each chosen answer desirable, each rejected one not."""
    out = []
    for line in PAIRS.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        for answer, label in ((r["chosen"], True), (r["rejected"], False)):
            out.append({"messages": [{"role": "user", "content": r["prompt"]},
                                     {"role": "assistant", "content": answer}], "label": label})
    path = tmp_path / "kto.jsonl"
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in out), encoding="utf-8")
    return path


@pytest.fixture
def pref_config(tiny_run_config, tmp_path):
    """tiny_run_config for a preference stage on the bundled pairs (or their unpaired KTO version)."""

    def build(stage: str = "dpo", *overrides: str):
        path = kto_records(tmp_path) if stage == "kto" else PAIRS
        return tiny_run_config(f"stage={stage}", f"data.datasets=[{{path: '{path}'}}]", "data.max_length=160",
                               "train.per_device_train_batch_size=4", "train.max_steps=1", *overrides)

    return build


# -- models and batches shared with the TRL oracle ------------------------------------------------------------------
@pytest.fixture(scope="module")
def oracle_models(tmp_path_factory, smollm2_dir) -> dict[str, str]:
    """A tiny base; a LoRA adapter whose B matrices are not zero (policy != reference); a perturbed full model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from conftest import TINY_LLAMA

    root = tmp_path_factory.mktemp("pref_models")
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    config = LlamaConfig(vocab_size=len(tok), tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **TINY_LLAMA)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    model = get_peft_model(LlamaForCausalLM.from_pretrained(root / "base"),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    model.save_pretrained(root / "adapter")
    full = LlamaForCausalLM.from_pretrained(root / "base")
    with torch.no_grad():
        for p in full.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.01)
    full.save_pretrained(root / "full")
    return {"base": str(root / "base"), "adapter": str(root / "adapter"), "full": str(root / "full"),
            "tokenizer": str(root / "base")}


def load_policy(models: dict[str, str], lora: bool):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if not lora:
        return AutoModelForCausalLM.from_pretrained(models["full"], dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(models["base"], dtype=torch.float32)
    return PeftModel.from_pretrained(base, models["adapter"], is_trainable=True)


def batch_of(pref_config, stage: str, n: int = 4, packing: bool = False, rows: slice | None = None,
             flash_kwargs: bool = False):
    from ember.data.preference_collate import PreferenceCollator
    from ember.training.prepare import prepare_data
    from ember.training.stages import STAGES

    cfg = pref_config(stage)
    samples = prepare_data(cfg, progress=False).data.train
    dataset = STAGES[stage].dataset(samples)
    picked = [dataset[i] for i in range(n)][rows or slice(None)]
    return PreferenceCollator(pad_token_id=2, packing=packing, flash_kwargs=flash_kwargs)(picked)


def ember_loss(model, batch: dict, stage: str, tmp_path: Path, **options) -> tuple[torch.Tensor, dict[str, float]]:
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "args"), use_cpu=True, report_to="none", bf16=False,
                             remove_unused_columns=False)
    trainer = PreferenceTrainer(model=model, args=args, objective=OBJECTIVES[stage],
                                options=PreferenceConfig(**options), train_dataset=[0], data_collator=lambda x: x)
    model.train()
    loss = trainer.compute_loss(model, {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
    return loss, {k: sum(v) / len(v) for k, v in trainer._metrics["train"].items()}


def peer_trl() -> Path:
    """trl 1.16.0 in its own folder (created once, reused): pip --no-deps --target, never the project venv."""
    from ember.core.paths import cache_root, file_lock

    peers = cache_root() / "peers"
    target = peers / "trl-1.16.0"
    with file_lock(peers / "trl-1.16.0.lock"):
        if not (target / "trl" / "__init__.py").is_file():
            partial = peers / "trl-1.16.0.partial"
            shutil.rmtree(partial, ignore_errors=True)
            # --no-deps: what trl needs (transformers, accelerate, datasets, peft, pandas, ...) is in the venv
            run = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                                  str(partial), TRL], capture_output=True, text=True, timeout=600)
            assert run.returncode == 0, f"pip install {TRL} failed:\n{run.stderr[-2000:]}"
            partial.rename(target)
    return target


def run_oracle(spec: dict, tmp_path: Path) -> dict:
    import os

    (tmp_path / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(peer_trl()), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("trl_oracle.py")), str(tmp_path / "spec.json"),
                           str(tmp_path / "out.json")], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["trl_version"] == "1.16.0"
    return out["cases"]


def approx_metric(key: str, value: float, beta: float):
    """Rewards and KTO's KL are (β ×) differences of two sums of ~100 float32 log-probs (each about −10): summed in
    another order they agree to ~1e-4 × β; everything else to 1e-5 relative."""
    difference = key.startswith("rewards/") or key == "kl"
    return pytest.approx(value, rel=1e-5, abs=1e-4 * max(beta, 1) if difference else 1e-5)


def plain(batch: dict) -> dict:
    return {k: v.tolist() for k, v in batch.items()}


@pytest.mark.slow
def test_every_loss_equals_trl_on_the_same_batch(oracle_models, pref_config, tmp_path):
    """~40 s (the first run also pip-installs trl, <1 MB): dpo sigmoid / conservative / ipo, orpo, simpo, kto."""
    pairs = batch_of(pref_config, "dpo")
    singles = [batch_of(pref_config, "dpo", rows=slice(i, i + 1)) for i in range(4)]
    kto = batch_of(pref_config, "kto")
    assert kto["kto_label"].tolist().count(True) not in (0, 4)  # both kinds in the batch
    cases = {
        "dpo_sigmoid": {"loss_type": "sigmoid", "beta": 0.1},
        "dpo_ipo": {"loss_type": "ipo", "beta": 0.5},
        # conservative DPO = TRL's `aot` loss on one pair (sorting one pair changes nothing): one batch per pair
        "dpo_conservative": {"loss_type": "sigmoid", "beta": 0.2, "label_smoothing": 0.2},
        "orpo": {"beta": 0.25},
        "simpo": {"beta": 2.0, "simpo_gamma": 0.8, "label_smoothing": 0.1},
        "kto": {"beta": 0.3, "kto_desirable_weight": 1.5, "kto_undesirable_weight": 0.7},
    }
    spec_cases = []
    for name, options in cases.items():
        batches = [plain(b) for b in singles] if name == "dpo_conservative" else [plain(pairs)]
        trl_options = {**options, "loss_type": "aot"} if name == "dpo_conservative" else options
        spec_cases.append({"name": name, "options": trl_options, "batches": batches})
    trl = run_oracle({**oracle_models, "pair_batch": plain(pairs), "kto_batch": plain(kto), "cases": spec_cases},
                     tmp_path)

    compared = {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected", "kl", "log_odds_ratio", "log_odds_chosen"}
    for name, options in cases.items():
        stage = name.split("_")[0]
        lora = stage in ("dpo", "kto")  # the reference: the same model with its adapter disabled, in both
        with torch.no_grad():
            loss, metrics = ember_loss(load_policy(oracle_models, lora), kto if stage == "kto" else pairs, stage,
                                       tmp_path, **options)
        theirs = trl[name]
        expected = theirs["loss"]
        if stage == "orpo":
            # TRL's ORPO adds the NLL of the chosen row over prompt + answer; Ember's is over the answer only (the
            # paper's L_SFT): the odds-ratio terms are compared, and the NLL against the plain SFT loss below.
            expected -= theirs["metrics"]["nll_loss"]
            loss = loss - metrics["nll_loss"]
        assert abs(float(loss) - expected) <= 1e-5, (name, float(loss), expected)
        assert abs(float(loss)) > 1e-3, name  # not a trivially equal zero
        if name == "dpo_conservative":
            continue
        shared = compared & theirs["metrics"].keys()
        assert shared >= {"rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"}, name
        for key in shared:
            assert metrics[key] == approx_metric(key, theirs["metrics"][key], options["beta"]), (name, key)
    # ORPO's NLL term is the SFT loss of the chosen answers (token mean over this batch).
    from ember.training.losses import causal_lm_loss

    model = load_policy(oracle_models, lora=False)
    n = pairs["input_ids"].shape[0] // 2
    with torch.no_grad():
        logits = model(input_ids=pairs["input_ids"][:n], attention_mask=pairs["attention_mask"][:n]).logits
        _, metrics = ember_loss(model, pairs, "orpo", tmp_path, beta=0.25)
    assert metrics["nll_loss"] == pytest.approx(float(causal_lm_loss(logits, pairs["labels"][:n])), rel=1e-5)


def test_dpo_step_zero_is_log_2_with_zero_rewards(pref_config, tmp_path):
    """Before the first update the policy is its reference: every pair's loss is −log σ(0) = log 2 exactly."""
    for method in ("lora", "full"):
        result = train(pref_config("dpo", f"method.type={method}", "preference.beta=0.5",
                                   f"output.dir={tmp_path / method}"))
        state = json.loads((result.output_dir / "trainer_state.json").read_text())
        first = state["log_history"][0]
        assert first["loss"] == float(torch.tensor(math.log(2), dtype=torch.float32)), method
        assert first["rewards/chosen"] == first["rewards/rejected"] == first["rewards/margins"] == 0.0, method
        assert first["rewards/accuracies"] == 0.0 and first["logps/chosen"] < 0 and first["logps/rejected"] < 0


def test_kto_step_zero_is_half_the_weights(pref_config, tmp_path):
    """Policy = reference and KL baseline 0: each example's loss is its weight × (1 − σ(0))."""
    result = train(pref_config("kto", "preference.kto_desirable_weight=1.5", "data.shuffle=false",
                               f"output.dir={tmp_path / 'kto'}"))
    first = json.loads((result.output_dir / "trainer_state.json").read_text())["log_history"][0]
    # 4 examples in the first batch: the first two pairs unpaired (true, false, true, false)
    assert first["loss"] == pytest.approx((2 * 1.5 * 0.5 + 2 * 1.0 * 0.5) / 4, abs=1e-7)
    assert first["kl"] == 0.0 and first["rewards/chosen"] == first["rewards/rejected"] == 0.0


def one_sgd_step(pref_config, stage: str, output: Path, batch: int, accumulation: int, *extra: str):
    cfg = pref_config(stage, "method.type=full", "train.optim=sgd", "train.learning_rate=1.0", "train.max_grad_norm=0",
                      f"train.per_device_train_batch_size={batch}", f"train.gradient_accumulation_steps={accumulation}",
                      "data.shuffle=false", f"output.dir={output}", *extra)
    grads = GradCapture()
    result = train(cfg, callbacks=[grads])
    (step,) = grads.steps
    return result, step


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))


@pytest.mark.parametrize("stage", ["dpo", pytest.param("orpo", marks=pytest.mark.slow)])
def test_batch_4_equals_batch_2_times_accumulation_2(stage, pref_config, tmp_path):
    """The step's loss divides by all its pairs (orpo's NLL: all its chosen tokens), not by each micro-batch's."""
    whole, g_whole = one_sgd_step(pref_config, stage, tmp_path / "b4", 4, 1)
    accumulated, g_acc = one_sgd_step(pref_config, stage, tmp_path / "b2", 2, 2)
    assert whole.metrics["train_loss"] == pytest.approx(accumulated.metrics["train_loss"], rel=1e-5)
    assert g_whole.keys() == g_acc.keys() and len(g_whole) > 0
    everything = torch.cat([g.flatten() for g in g_whole.values()])
    assert everything.abs().sum() > 0
    assert relative_difference(torch.cat([g.flatten() for g in g_acc.values()]), everything) <= 1e-5
    w_whole, w_acc = saved_tensors(tmp_path / "b4"), saved_tensors(tmp_path / "b2")
    for name in w_whole:
        assert relative_difference(w_acc[name], w_whole[name]) <= 1e-6, name


@pytest.mark.parametrize("stage", ["dpo", "orpo", "kto"])
def test_packed_batch_equals_padded_batch(stage, oracle_models, pref_config, tmp_path):
    padded, packed = batch_of(pref_config, stage), batch_of(pref_config, stage, packing=True)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    assert int(packed["sequence_index"].max()) + 1 == padded["input_ids"].shape[0] == 8
    results = []
    for batch in (padded, packed):
        model = load_policy(oracle_models, lora=True)
        options = {"beta": 0.3} if stage != "orpo" else {"beta": 0.25}
        loss, metrics = ember_loss(model, batch, stage, tmp_path, **options)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((loss.detach(), metrics, grads))
    (loss_pad, m_pad, g_pad), (loss_pack, m_pack, g_pack) = results
    assert abs(float(loss_pad) - float(loss_pack)) <= 1e-5 and abs(float(loss_pad)) > 1e-3
    assert m_pad.keys() == m_pack.keys()
    for key in m_pad:
        assert m_pack[key] == approx_metric(key, m_pad[key], options["beta"]), key
    for a, b in zip(g_pad, g_pack, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("stage", ["dpo", "kto"])
def test_packed_pairs_hand_flash_kernels_their_boundaries(stage, oracle_models, pref_config, tmp_path):
    """A packed preference batch for a flash-attention model (`packing and flash`, as `ember train` asks its stage)
    carries the 2B sequences' boundaries; they reach every layer of the policy's and the reference's forwards, and
    attending between them gives the padded batch's loss, gradients and precomputed reference log-probs."""
    from transformers import AttentionInterface, AutoTokenizer

    from ember.data.preference_collate import PreferenceCollator
    from ember.training.stages import STAGES

    tokenizer = AutoTokenizer.from_pretrained(oracle_models["tokenizer"])
    assert STAGES[stage].collator(tokenizer, True, flash=True) == PreferenceCollator(
        tokenizer.pad_token_id, packing=True, flash_kwargs=True)
    assert not STAGES[stage].collator(tokenizer, False, flash=True).flash_kwargs  # padded rows keep their mask
    padded = batch_of(pref_config, stage)
    packed = batch_of(pref_config, stage, packing=True, flash_kwargs=True)
    lengths = padded["attention_mask"].sum(1).tolist()
    bounds = torch.tensor([0, *lengths]).cumsum(0).tolist()
    assert packed["cu_seq_lens_q"].dtype == torch.int32 and packed["cu_seq_lens_q"].tolist() == bounds
    assert packed["cu_seq_lens_k"].tolist() == bounds and packed["max_length_q"] == packed["max_length_k"] == max(lengths)
    calls = []
    AttentionInterface.register("ember_test_varlen", varlen_stand_in(calls))
    results = []
    for batch, attention in ((padded, "sdpa"), (packed, "ember_test_varlen")):
        model = load_policy(oracle_models, lora=True)
        model.base_model.model.set_attn_implementation(attention)
        loss, _ = ember_loss(model, batch, stage, tmp_path, beta=0.3)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    layers = model.config.num_hidden_layers
    assert calls == [(bounds, bounds, max(lengths), max(lengths))] * (2 * layers)  # policy, then LoRA disabled
    (loss_pad, g_pad), (loss_pack, g_pack) = results
    assert abs(float(loss_pad) - float(loss_pack)) <= 1e-5 and abs(float(loss_pad)) > 1e-3
    for a, b in zip(g_pad, g_pack, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-6)

    # the precomputed reference's batches carry them too (their max_length is an int, not moved to a device)
    from transformers import TrainingArguments

    from ember.training.prepare import prepare_data

    dataset = STAGES[stage].dataset(prepare_data(pref_config(stage), progress=False).data.train)
    stored = []
    for collator, attention in ((PreferenceCollator(2), "sdpa"),
                                (PreferenceCollator(2, packing=True, flash_kwargs=True), "ember_test_varlen")):
        model.base_model.model.set_attn_implementation(attention)
        args = TrainingArguments(output_dir=str(tmp_path / "args"), use_cpu=True, report_to="none",
                                 per_device_eval_batch_size=4, remove_unused_columns=False)
        trainer = PreferenceTrainer(model=model, args=args, objective=OBJECTIVES[stage],
                                    options=PreferenceConfig(beta=0.3), train_dataset=dataset, data_collator=collator)
        calls.clear()
        stored.append(trainer._compute_reference(dataset))
    assert len(calls) == layers * -(-len(dataset) // 4)
    padded_ref, packed_ref = (torch.tensor(rows, dtype=torch.float64) for rows in stored)
    assert padded_ref.shape == (len(dataset), 2) and torch.allclose(padded_ref, packed_ref, rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_precomputed_reference_is_stored_with_the_data_and_matches_the_live_one(pref_config, tmp_path):
    cache = tmp_path / "data-cache"
    common = ("train.max_steps=2", "data.cache=true", f"data.cache_dir={cache}", "data.shuffle=false",
              "train.learning_rate=5e-3")
    live = train(pref_config("dpo", "method.type=full", *common, f"output.dir={tmp_path / 'live'}"))
    stored = train(pref_config("dpo", "method.type=full", "preference.precompute_ref=true", *common,
                               f"output.dir={tmp_path / 'pre'}"))
    files = sorted(cache.rglob("*.ref-*.arrow"))
    assert len(files) == 1 and files[0].parent.parent == cache  # beside the cached samples of this data
    assert logged_losses(stored.output_dir) == pytest.approx(logged_losses(live.output_dir), abs=1e-6)
    assert logged_losses(live.output_dir)[0] == pytest.approx(math.log(2), abs=1e-6)
    stamp = files[0].stat().st_mtime_ns
    train(pref_config("dpo", "method.type=full", "preference.precompute_ref=true", *common,
                      f"output.dir={tmp_path / 'again'}"))
    assert files[0].stat().st_mtime_ns == stamp  # the same reference: read back, not recomputed


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["simpo", "kto"])  # dpo: the tests above; orpo: accumulation (full)
def test_lora_trains_and_the_loss_falls(stage, pref_config, tmp_path):
    """Three steps on the same four pairs (lr 1e-2): the adapter moves and the loss goes down."""
    cfg = pref_config(stage, "train.max_steps=3", "train.learning_rate=1e-2", "data.shuffle=false",
                      "train.num_train_epochs=3",
                      f"data.datasets=[{{path: '{kto_records(tmp_path) if stage == 'kto' else PAIRS}', samples: 4}}]",
                      "preference.beta=0.5" if stage != "simpo" else "preference.beta=2.0")
    result = train(cfg)
    losses = logged_losses(result.output_dir)
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    assert all("lora_" in name for name in saved_tensors(result.output_dir))


@pytest.mark.slow
def test_qlora_dpo_trains(pref_config, tmp_path):
    pytest.importorskip("bitsandbytes")
    result = train(pref_config("dpo", "method.type=qlora", "method.compute_dtype=float32", "train.max_steps=2",
                               "data.shuffle=false", "train.learning_rate=1e-2", f"output.dir={tmp_path / 'q'}"))
    losses = logged_losses(result.output_dir)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6) and losses[1] != losses[0]
    adapter = saved_tensors(result.output_dir)
    assert any(t.abs().sum() > 0 for n, t in adapter.items() if "lora_B" in n)


@pytest.mark.slow
def test_two_process_ddp_dpo_matches_one_process(pref_config, tmp_path):
    """torchrun, 2 ranks × 2 pairs = one process with 2 pairs × accumulation 2: same losses, rewards and weights."""
    from .helpers import check_ok, launch_env, run_group, torchrun, write_config

    common = ("method.type=full", "train.max_steps=2", "train.learning_rate=1e-3", "data.shuffle=false",
              "train.per_device_train_batch_size=2", "preference.beta=0.5")
    ddp_cfg = pref_config("dpo", *common, f"output.dir={tmp_path / 'ddp'}")
    path = write_config(ddp_cfg, tmp_path / "ddp.yaml")
    done = run_group(torchrun("--standalone", "--nproc_per_node", "2", "-m", "ember", "train", str(path)),
                     launch_env(), timeout=300)
    check_ok(done)
    single = train(pref_config("dpo", *common, "train.gradient_accumulation_steps=2",
                               f"output.dir={tmp_path / 'single'}"))
    history = {name: [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
               for name, out in (("ddp", tmp_path / "ddp"), ("single", single.output_dir))}
    for a, b in zip(history["ddp"], history["single"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        for key in ("rewards/chosen", "rewards/margins", "rewards/accuracies", "logps/chosen"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-4), key
    for name, tensor in saved_tensors(single.output_dir).items():
        torch.testing.assert_close(saved_tensors(tmp_path / "ddp")[name], tensor, rtol=1e-4, atol=1e-6)
