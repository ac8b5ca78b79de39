"""Validation: `ember plan` against published GPU memory figures for 7B and 14B models (no GPU needed: the
planner reads configs only; each model is described by its published dimensions as a random-init config).

Sources (see docs/training.md, `ember plan`, for the discussion):
- Qwen (QwenLM/Qwen README, "Profiling of Memory and Speed"): measured peak GPU memory of Qwen-7B and Qwen-14B
  fine-tuning on one A100-SXM4-80G, FlashAttention 2, batch 1 (every sample padded to the sequence length),
  gradient accumulation 8, gradient checkpointing, bf16; LoRA r64 on every linear layer (finetune.py); "LoRA (emb)"
  also trains the embeddings and the head; Q-LoRA on the GPTQ Int4 model in fp16.
- LLaMA-Factory README, "Hardware Requirement" (marked *estimated*): GiB per method for 7B and 14B.
- QLoRA paper (Dettmers et al., 2023): a 65B model fine-tuned on one 48 GB GPU.

    python bench/plan_published.py            # add --out bench/results/plan_published.txt to save
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GIB = 1 << 30
QWEN_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 32, "vocab_size": 151936, "tie_word_embeddings": False}
QWEN_14B = {"hidden_size": 5120, "intermediate_size": 13696, "num_hidden_layers": 40, "num_attention_heads": 40,
            "num_key_value_heads": 40, "vocab_size": 152064, "tie_word_embeddings": False}
LLAMA2_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "vocab_size": 32000, "tie_word_embeddings": False}
LLAMA2_13B = {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40, "num_attention_heads": 40,
              "num_key_value_heads": 40, "vocab_size": 32000, "tie_word_embeddings": False}
LLAMA_65B = {"hidden_size": 8192, "intermediate_size": 22016, "num_hidden_layers": 80, "num_attention_heads": 64,
             "num_key_value_heads": 64, "vocab_size": 32000, "tie_word_embeddings": False}
LENGTHS = (256, 512, 1024, 2048, 4096, 8192)
# Qwen README table, GB per sequence length above
QWEN_MEASURED = {
    ("Qwen-7B", "LoRA"): (20.1, 20.4, 21.5, 23.8, 29.7, 36.6),
    ("Qwen-7B", "LoRA (emb)"): (33.7, 34.1, 35.2, 35.1, 39.2, 48.5),
    ("Qwen-7B", "Q-LoRA"): (11.5, 11.5, 12.3, 13.9, 16.9, 23.5),
    ("Qwen-14B", "LoRA"): (34.6, 35.1, 35.3, 37.4, 42.5, 55.2),
    ("Qwen-14B", "LoRA (emb)"): (51.2, 51.1, 51.5, 54.1, 56.8, 67.7),
    ("Qwen-14B", "Q-LoRA"): (18.7, 18.4, 18.9, 19.9, 23.0, 27.9),
}
QWEN_METHODS = {
    "LoRA": [],
    "LoRA (emb)": ["method.modules_to_save=[embed_tokens,lm_head]"],
    # Qwen's Q-LoRA runs in fp16 (GPTQ); Ember's bitsandbytes QLoRA computes in bf16 when train.bf16 is set
    "Q-LoRA": ["method.type=qlora", "method.compute_dtype=bfloat16", "train.bf16=true"],
}


def config(dims: dict, *overrides: str):
    from ember.config import apply_override, from_dict, validate
    from ember.config.schema import EmberConfig

    raw = {"model": {"name_or_path": "llama", "random_init": True, "config_overrides": dict(dims)},
           "data": {"datasets": [{"path": "unused.jsonl"}]}, "train": {}}
    for item in overrides:
        apply_override(raw, item)
    return validate(from_dict(EmberConfig, raw, "published"))


_SHAPES: dict = {}


def gpu_plan(cfg, devices: int = 1, memory_gib: float = 80.0, chunked_loss: bool | None = False):
    """Plan on `devices` GPUs; the described model is reused across lengths and batches (it depends on neither).
    The published runs took their loss from the model's logits (transformers' Trainer), so that is planned unless
    `chunked_loss` is None (the loss `ember train` takes: Ember's chunked one)."""
    from ember.planning import Target, plan
    from ember.planning.architecture import describe

    key = (repr(cfg.model), repr(cfg.method))
    if key not in _SHAPES:
        _SHAPES[key] = describe(cfg, gpu=True)
    return plan(cfg, Target(True, devices, int(memory_gib * GIB)), suggest=False, shape=_SHAPES[key],
                chunked_loss=chunked_loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    lines = ["ember plan vs published GPU memory (GB as published; predictions in GiB = 2^30 bytes, CUDA context "
             "included)", ""]
    errors = []
    lines.append("Qwen README (measured; 1 x A100-80G, flash-attn 2, batch 1 padded to the length, GA 8, gradient "
                 "checkpointing, bf16; LoRA r64 alpha16 dropout 0.05 on every linear layer)")
    lines.append(f"{'model':9s} {'method':11s} " + " ".join(f"{n:>15d}" for n in LENGTHS))
    for (model, method), measured in QWEN_MEASURED.items():
        dims = QWEN_7B if model == "Qwen-7B" else QWEN_14B
        cells = []
        for length, published in zip(LENGTHS, measured, strict=True):
            cfg = config(dims, "model.attn_implementation=flash_attention_2", "model.dtype=bfloat16",
                         "method.rank=64", "method.alpha=16", "method.dropout=0.05", "train.bf16=true",
                         "train.per_device_train_batch_size=1", "train.gradient_accumulation_steps=8",
                         "train.gradient_checkpointing=true", f"data.max_length={length}", *QWEN_METHODS[method])
            predicted = gpu_plan(cfg).memory.peak / GIB
            error = (predicted - published) / published
            errors.append((f"{model} {method} {length}", error))
            cells.append(f"{predicted:5.1f}/{published:4.1f} {100 * error:+4.0f}%")
        lines.append(f"{model:9s} {method:11s} " + " ".join(f"{c:>15s}" for c in cells))
    qwen = [abs(e) for _, e in errors]
    lines.append(f"(cells: predicted GiB / published GB, error) Qwen rows: mean |error| {100 * sum(qwen) / len(qwen):.1f}%, "
                 f"largest {100 * max(qwen):.1f}%")

    lines += ["", "LLaMA-Factory README hardware table (*estimated*, no batch or length given; planned here at "
                  "batch 1 x 1024 tokens, gradient checkpointing, flash-attn 2)"]
    lines.append(f"{'method':34s} {'7B (Llama-2)':>18s} {'13B (Llama-2)':>18s}")
    rows = [
        ("Full, bf16 mixed (fp32 weights)", ["method.type=full", "model.dtype=float32"], (120, 240)),
        ("Full, pure bf16", ["method.type=full", "model.dtype=bfloat16"], (60, 120)),
        ("Freeze (2 layers), bf16", ["method.type=freeze", "model.dtype=bfloat16"], (16, 32)),
        ("LoRA r8, bf16", ["model.dtype=bfloat16"], (16, 32)),
        ("QLoRA 8-bit", ["method.type=qlora", "method.bits=8", "train.bf16=true"], (10, 20)),
        ("QLoRA 4-bit (nf4)", ["method.type=qlora", "method.compute_dtype=bfloat16", "train.bf16=true"], (6, 12)),
    ]
    for label, overrides, published in rows:
        cells = []
        for dims, value in zip((LLAMA2_7B, LLAMA2_13B), published, strict=True):
            cfg = config(dims, "model.attn_implementation=flash_attention_2", "train.bf16=true",
                         "train.per_device_train_batch_size=1", "train.gradient_checkpointing=true",
                         "data.max_length=1024", *overrides)
            predicted = gpu_plan(cfg, memory_gib=1000).memory.peak / GIB
            cells.append(f"{predicted:6.1f}/{value:4d} {100 * (predicted - value) / value:+4.0f}%")
        lines.append(f"{label:34s} " + " ".join(f"{c:>18s}" for c in cells))
    lines.append("(the 14B column of the table is compared with Llama-2-13B)")

    cfg = config(LLAMA_65B, "method.type=qlora", "method.compute_dtype=bfloat16", "train.bf16=true",
                 "method.rank=64", "method.alpha=16", "train.optim=paged_adamw_32bit", "model.dtype=bfloat16",
                 "train.per_device_train_batch_size=1", "train.gradient_checkpointing=true", "data.max_length=512")
    result = gpu_plan(cfg, memory_gib=48)
    lines += ["", f"QLoRA paper: LLaMA-65B, nf4 + LoRA r64 on every linear layer, paged AdamW, batch 1 x 512, "
                  f"gradient checkpointing on one 48 GB GPU: planned {result.memory.peak / GIB:.1f} GiB -> "
                  f"{'fits' if result.fits else 'does NOT fit'} (published: fits)"]
    own = gpu_plan(cfg, memory_gib=48, chunked_loss=None)
    lines += ["", "The same settings as `ember train` runs them (its chunked loss: no [tokens x vocabulary] logits):",
              f"QLoRA paper's LLaMA-65B: {own.memory.peak / GIB:.1f} GiB -> {'fits' if own.fits else 'does NOT fit'}"]
    for model, dims in (("Qwen-7B", QWEN_7B), ("Qwen-14B", QWEN_14B)):
        cells = []
        for length in LENGTHS:
            cfg = config(dims, "model.attn_implementation=flash_attention_2", "model.dtype=bfloat16",
                         "method.rank=64", "method.alpha=16", "method.dropout=0.05", "train.bf16=true",
                         "train.per_device_train_batch_size=1", "train.gradient_accumulation_steps=8",
                         "train.gradient_checkpointing=true", f"data.max_length={length}", *QWEN_METHODS["LoRA"])
            logits, chunked = (gpu_plan(cfg, chunked_loss=c).memory.peak / GIB for c in (False, None))
            cells.append(f"{logits:5.1f}->{chunked:5.1f}")
        lines.append(f"{model} LoRA, logits loss -> chunked (GiB): " + " ".join(
            f"{n}: {c}" for n, c in zip(LENGTHS, cells, strict=True)))
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
