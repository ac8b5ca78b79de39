"""The model a config describes, built on the `meta` device and tuned by the configured method: every parameter's
size, dtype and trainability are exact, and nothing is allocated or read from a weights file.

The method is applied by the same `apply_method` that `ember train` uses (peft on meta tensors works), so LoRA
ranks, `lora_layers`, `targets`, `modules_to_save` and freeze rules count exactly as in a run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from ember.config.schema import EmberConfig
from ember.errors import ConfigError
from ember.models.forward import base_model

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Linear:
    """One projection inside a decoder layer, as training sees it."""

    name: str  # path inside the layer, e.g. "self_attn.q_proj"
    in_features: int
    out_features: int
    role: str  # attn_in | attn_out | mlp_in | mlp_out
    base_trainable: bool
    lora_rank: int = 0  # 0: no adapter
    lora_dropout: float = 0.0
    quantized: bool = False  # a bitsandbytes 4/8-bit weight (QLoRA): its matmul saves nothing for backward
    weight_bytes: int = 4  # bytes per element of the (unquantized) weight on the device


@dataclass(frozen=True)
class Layer:
    index: int
    linears: tuple[Linear, ...]
    norm_trainable: bool
    trainable: bool  # holds any trainable parameter
    params: int


@dataclass(frozen=True)
class ParamGroup:
    """Parameters that share dtype, trainability and storage format."""

    numel: int
    bytes: int  # on the device, as Ember holds them (4-bit weights packed)
    trainable: bool
    dtype: str  # float32 | bfloat16 | float16 | nf4 | fp4 | int8


@dataclass(frozen=True)
class ModelShape:
    model_type: str
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    layers: tuple[Layer, ...]
    groups: tuple[ParamGroup, ...]
    residual_bytes: int  # dtype of the hidden states between layers (the embedding's dtype)
    adapter_bytes: int  # dtype of the LoRA weights (peft keeps them fp32 over a half-precision base)
    embedding_trainable: bool
    final_norm_trainable: bool
    lm_head_trainable: bool
    lm_head_weight_bytes: int
    largest_layer_params: int  # the biggest block ZeRO-3 gathers at once
    largest_trainable_tensor: int  # elements of the biggest trainable parameter
    attention: str  # sdpa | eager | flash
    notes: tuple[str, ...] = ()
    # How a packed row's samples are kept apart without a block mask, as `ember train` runs the model:
    # "segments", "flash" or None (ember.models.segment_attention.packed_row_attention)
    packed_attention: Optional[str] = None
    # The logits are the output embedding applied to the last hidden state, so `ember train` can take a causal-LM
    # loss chunk by chunk from that state (ember.training.chunked_loss) without the model's logits.
    projected_logits: bool = False

    @property
    def segments(self) -> bool:
        """Packed rows attend sample by sample (SDPA through transformers' attention interface)."""
        return self.packed_attention == "segments"

    @property
    def packs_without_mask(self) -> bool:
        """A packed row needs no block mask, so `data.packing: null` packs this model."""
        return self.packed_attention is not None

    @property
    def total_params(self) -> int:
        return sum(g.numel for g in self.groups)

    @property
    def trainable_params(self) -> int:
        return sum(g.numel for g in self.groups if g.trainable)

    def region(self) -> tuple[Layer, ...]:
        """The decoder layers backward runs through: from the lowest trainable one up (all, when the embeddings
        train). Below them nothing needs a gradient, so their forward saves nothing."""
        if self.embedding_trainable:
            return self.layers
        trained = [layer.index for layer in self.layers if layer.trainable]
        return self.layers[min(trained):] if trained else ()


def weight_dtype(cfg: EmberConfig, gpu: bool) -> torch.dtype:
    """The dtype `ember train` loads weights in on the target: `auto` is bf16 on a GPU and fp32 on a CPU."""
    if cfg.model.dtype != "auto":
        return _DTYPES[cfg.model.dtype]
    return torch.bfloat16 if gpu else torch.float32


def read_config(cfg: EmberConfig):
    """The transformers config of `cfg.model`, without loading weights (or converting a GGUF)."""
    from ember.models.loading import load_config

    try:
        config = load_config(cfg.model, convert=False)
    except OSError as exc:
        raise ConfigError(
            f"model.name_or_path={cfg.model.name_or_path}: its config.json could not be read ({_first_line(exc)}); "
            "planning needs only that file: give a local model directory, or allow the hub (HF_HUB_OFFLINE=0)"
        ) from None
    if cfg.model.random_init and "vocab_size" not in cfg.model.config_overrides:
        # `ember train` sizes a random model's vocabulary to its tokenizer (ember.models.loading.load_model).
        from ember.models.loading import load_tokenizer

        config.vocab_size = len(load_tokenizer(cfg.model))
    return config


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def build_meta_model(cfg: EmberConfig, gpu: bool):
    """The tuned model on the meta device, and the ids of the weights bitsandbytes would quantize (QLoRA)."""
    from transformers import AutoModelForCausalLM

    from ember.models.adapters import apply_method
    from ember.models.loading import detect_family

    config = read_config(cfg)
    attention = cfg.model.attn_implementation
    # FlashAttention kernels need not be installed to plan for them: the meta model is built with sdpa, and the
    # planner counts what flash-attn keeps (ModelShape.attention).
    kwargs = {"attn_implementation": "sdpa" if "flash" in attention else attention} if attention else {}
    family = detect_family(getattr(config, "model_type", ""), cfg.model.family)
    trust = cfg.model.trust_remote_code if cfg.model.trust_remote_code is not None else bool(family and family.trust_remote_code)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=weight_dtype(cfg, gpu), trust_remote_code=trust, **kwargs)
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"model.name_or_path={cfg.model.name_or_path}: cannot build it from its config ({_first_line(exc)})") from None
    from ember.models.quantized import PREQUANTIZED, checkpoint_quantization

    # A GPTQ/AWQ checkpoint: from_config builds plain Linears where its layers are int4/int8. Plan them as quantized
    # weights (like QLoRA's) and adapt them as plain Linears (the meta model has no quantized layer to target).
    prequantized = checkpoint_quantization(config) in PREQUANTIZED
    if prequantized:
        del model.config.quantization_config
    quantized = _quantized_weights(model) if cfg.method.type == "qlora" or prequantized else set()
    model.config.use_cache = False
    model = apply_method(model, cfg.method, family, False)
    if stores_frozen_in_bf16(cfg, gpu):
        from ember.models.adapters import store_frozen_linears_in

        store_frozen_linears_in(model, torch.bfloat16)
    return model, quantized


def stores_frozen_in_bf16(cfg: EmberConfig, gpu: bool) -> bool:
    """`ember train` stores a LoRA run's frozen Linear weights in bf16 when it trains under bf16 autocast without
    DeepSpeed (ember.training.run); train.bf16 unset resolves as ember.training.arguments does."""
    from ember.core.hardware import bf16_supported

    t = cfg.train
    bf16 = t.bf16 if t.bf16 is not None else ((gpu or bf16_supported()) and not t.fp16 and cfg.method.type != "qlora")
    return cfg.method.type == "lora" and bool(bf16) and not t.deepspeed


def _checkpoint_bits(config) -> Optional[int]:
    """The bits of a GPTQ/AWQ checkpoint's weights (its config.json's quantization_config), else None."""
    q = getattr(config, "quantization_config", None)
    bits = q.get("bits") if isinstance(q, dict) else getattr(q, "bits", None)
    return int(bits) if bits else None


def _quantized_weights(model) -> set[int]:
    """Ids of the weights `from_pretrained` with a BitsAndBytesConfig turns into 4/8-bit: every nn.Linear except
    the modules transformers keeps in full precision (the output head and tied weights)."""
    from transformers.quantizers.base import get_keys_to_not_convert
    from transformers.quantizers.quantizers_utils import should_convert_module

    keep = get_keys_to_not_convert(model)
    return {id(m.weight) for name, m in model.named_modules()
            if type(m) is torch.nn.Linear and should_convert_module(name, keep)}


def describe(cfg: EmberConfig, gpu: bool) -> ModelShape:
    """Everything the planner needs to know about the tuned model, read off the meta model."""
    from ember.models.adapters import decoder_stack
    from ember.models.segment_attention import packed_row_attention

    model, quantized = build_meta_model(cfg, gpu)
    config = model.config
    base = base_model(model)
    _, stack = decoder_stack(base)
    from ember.models.quantized import checkpoint_quantization

    source = read_config(cfg)
    bits = cfg.method.bits or _checkpoint_bits(source) or 4
    # a GPTQ/AWQ checkpoint's int4 weights are counted with bitsandbytes' 4-bit storage (packed values plus
    # per-group scales: within a few percent of either layout)
    four_bit = checkpoint_quantization(source) or cfg.method.quant_type or "nf4"
    groups: dict[tuple[bool, str], list[int]] = {}
    for p in model.parameters():  # shared (tied) parameters come once
        if id(p) in quantized:
            dtype, nbytes = (("int8", _int8_bytes(p)) if bits == 8 else (four_bit, _4bit_bytes(p, cfg)))
        else:
            dtype, nbytes = str(p.dtype).removeprefix("torch."), p.numel() * p.element_size()
        entry = groups.setdefault((p.requires_grad, dtype), [0, 0])
        entry[0] += p.numel()
        entry[1] += nbytes
    layers = tuple(_layer(i, layer, quantized, config.hidden_size) for i, layer in enumerate(stack))
    embed, head = base.get_input_embeddings(), base.get_output_embeddings()
    inside = {id(p) for m in (stack, embed, head) if m is not None for p in m.parameters()}
    heads = config.num_attention_heads
    notes = []
    if any(getattr(config, k, None) for k in ("num_experts", "num_local_experts", "n_routed_experts")):
        notes.append("mixture-of-experts model: parameters are exact, activations are planned as for a dense layer")
    return ModelShape(
        model_type=getattr(config, "model_type", "?"),
        hidden=config.hidden_size,
        heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        vocab=config.vocab_size,
        layers=layers,
        groups=tuple(ParamGroup(n, b, trainable, dtype) for (trainable, dtype), (n, b) in sorted(groups.items())),
        residual_bytes=next(embed.parameters()).element_size(),
        adapter_bytes=_adapter_bytes(model),
        embedding_trainable=_trains(embed),
        # the final norm: a trainable norm weight outside the decoder stack, embeddings and head
        final_norm_trainable=any(p.requires_grad and id(p) not in inside and "norm" in n
                                 for n, p in base.named_parameters()),
        lm_head_trainable=head is not None and _trains(head),
        lm_head_weight_bytes=next(head.parameters()).element_size() if head is not None else 4,
        # DeepSpeed's own measure (estimate_zero3_model_states_mem_needs_all_live): the most parameters one module
        # holds directly, which ZeRO-3 gathers whole
        largest_layer_params=max(sum(p.numel() for p in m.parameters(recurse=False)) for m in base.modules()),
        largest_trainable_tensor=max((p.numel() for p in model.parameters() if p.requires_grad), default=0),
        attention="flash" if "flash" in (cfg.model.attn_implementation or "") else _attention_kind(config),
        notes=tuple(notes),
        # the configured name decides: the meta model runs SDPA where flash attention is asked for
        packed_attention=packed_row_attention(base, cfg.model.attn_implementation),
        projected_logits=_projected_logits(base),
    )


# config keys of a final soft-cap or logit scale (Gemma 2, Cohere, Granite): the logits are not the projection
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def _projected_logits(model) -> bool:
    """What EmberTrainer finds, read off the meta model: a head and decoder the chunked loss can use
    (`projection_decoder`), logits at chosen positions, and, in place of the probe of real logits, no final
    soft-cap or logit scale in the config."""
    from ember.models.forward import accepts_logits_to_keep, projection_decoder

    configs = {id(c): c for c in (model.config, model.config.get_text_config())}.values()
    transformed = any(getattr(c, key, None) not in (None, 0, 1) for c in configs for key in _LOGIT_TRANSFORMS)
    return projection_decoder(model) is not None and accepts_logits_to_keep(model) and not transformed


def _trains(module: torch.nn.Module) -> bool:
    """peft's modules_to_save keeps the original beside a trained copy: the module trains if any of it does."""
    return any(p.requires_grad for p in module.parameters())


def _adapter_bytes(model) -> int:
    for name, p in model.named_parameters():
        if "lora_" in name:
            return p.element_size()
    return 4


def _attention_kind(config) -> str:
    name = getattr(config, "_attn_implementation", None) or "sdpa"
    if "flash" in name:
        return "flash"
    return "eager" if name == "eager" else "sdpa"


def _4bit_bytes(p: torch.Tensor, cfg: EmberConfig) -> int:
    """bitsandbytes 4-bit storage: two values per byte, one absmax per 64-value block and the 16-value code (fp32);
    with double quantization the absmax is one byte, plus an fp32 absmax per 256 blocks, a 256-value code and an
    offset."""
    n = p.numel()
    blocks = -(-n // 64)
    if cfg.method.double_quant is False:
        return (n + 1) // 2 + 4 * blocks + 64
    return (n + 1) // 2 + blocks + 64 + 4 * -(-blocks // 256) + 1024 + 4


def _int8_bytes(p: torch.Tensor) -> int:
    """LLM.int8: one byte per value and one fp32 scale per output row."""
    return p.numel() + 4 * p.shape[0]


def _layer(index: int, layer: torch.nn.Module, quantized: set[int], hidden: int) -> Layer:
    found = []  # (name, base Linear, rank, dropout) in registration order
    for name, m in layer.named_modules():
        base = getattr(m, "base_layer", None)
        if isinstance(base, torch.nn.Linear) and hasattr(m, "lora_A"):
            adapter = next(iter(m.lora_A))
            found.append((name, base, m.r[adapter], getattr(m.lora_dropout[adapter], "p", 0.0)))
        elif isinstance(m, torch.nn.Linear) and not _inside_adapter(name):
            found.append((name, m, 0, 0.0))
    attention = [f for f in found if any(k in f[0].lower() for k in ("attn", "attention"))]
    mlp = [f for f in found if f not in attention]
    # Modelling code registers the projections in data-flow order: the last one of each block is its output.
    roles = {f[0]: ("attn_out" if f is attention[-1] else "attn_in") for f in attention}
    roles.update({f[0]: ("mlp_out" if f is mlp[-1] else "mlp_in") for f in mlp})
    linears = tuple(_linear(name, m, quantized, roles[name], rank, dropout) for name, m, rank, dropout in found)
    norm_trainable = any(p.requires_grad for n, p in layer.named_parameters() if "norm" in n and "lora_" not in n)
    return Layer(index, linears, norm_trainable, any(p.requires_grad for p in layer.parameters()),
                 sum(p.numel() for p in layer.parameters()))


def _inside_adapter(name: str) -> bool:
    return any(part in ("base_layer", "lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "modules_to_save",
                        "original_module") for part in name.split("."))


def _linear(name: str, m: torch.nn.Linear, quantized: set[int], role: str, rank: int, dropout: float) -> Linear:
    return Linear(name=name, in_features=m.in_features, out_features=m.out_features, role=role,
                  base_trainable=m.weight.requires_grad, lora_rank=rank, lora_dropout=float(dropout),
                  quantized=id(m.weight) in quantized, weight_bytes=m.weight.element_size())


def with_method(cfg: EmberConfig, **changes) -> EmberConfig:
    """A copy of `cfg` with `method` fields changed (used to plan alternatives)."""
    return dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, **changes))
