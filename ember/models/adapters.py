"""Apply the tuning method to a loaded model: LoRA / QLoRA (peft), full, or freeze (last N layers / named modules)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Optional

import torch

from ember.config.schema import MethodConfig
from ember.errors import ConfigError
from ember.models.registry import Family

log = logging.getLogger(__name__)
EMBEDDING_NAMES = ("embed_tokens", "lm_head", "wte", "word_embeddings", "embed_in", "embed_out", "output", "tok_embeddings")


def quantization_config(method: MethodConfig, compute_dtype: torch.dtype):
    if method.type != "qlora":
        return None
    from transformers import BitsAndBytesConfig

    if method.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=method.quant_type or "nf4",
        bnb_4bit_use_double_quant=method.double_quant is not False,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def lora_targets(method: MethodConfig, family: Optional[Family]) -> Any:
    """peft's `target_modules`: "all-linear", the family's `lora_targets` (families.yaml), or the names given."""
    if method.targets == "family":
        if family is None:
            raise ConfigError("method.targets: family needs a model family Ember knows (families.yaml); this "
                              "model's model_type is in none: set model.family, or list the module names")
        return list(family.lora_targets)
    if method.targets != "all-linear":
        return list(method.targets)
    return "all-linear"


def apply_method(model, method: MethodConfig, family: Optional[Family], gradient_checkpointing: bool = False,
                 new_token_rows: Sequence[int] = ()):
    """Return the model to train, with exactly the intended parameters requiring grad.

    `new_token_rows`: embedding rows no training has shaped (tokens a chat template added, rows a resize created);
    with LoRA they train as PEFT trainable tokens in embed_tokens and lm_head, the rest of both matrices frozen.

    An image-text model (docs/multimodal.md) is tuned in its language model: LoRA targets only its modules and
    `freeze` counts only its layers; the vision tower and the projector stay frozen unless `method.train_vision` /
    `method.train_projector` (LoRA then also adapts the tower's linear layers and trains the projector whole).
    """
    from ember.models.vision import is_image_text, vision_parts

    parts = vision_parts(family, model.config) if is_image_text(model.config) else None
    if parts is None and (method.train_vision or method.train_projector):
        raise ConfigError("method.train_vision / method.train_projector apply to image-text models; this model "
                          f"({type(model).__name__}) has no vision tower: set them to false")
    from ember.models.quantized import checkpoint_quantization, is_prequantized, linear_targets

    prequantized = is_prequantized(model)
    if prequantized and method.type not in ("lora", "qlora"):
        raise ConfigError(f"the base is a quantized checkpoint ({checkpoint_quantization(model.config)}); "
                          f"its weights cannot train with method.type={method.type}: use method.type=lora")
    if method.type == "full":
        for name, p in model.named_parameters():
            p.requires_grad_(parts is None or _vision_trainable(name, parts, method, default=True))
        return model
    if method.type == "freeze":
        return _freeze(model, method, parts)
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if method.type == "qlora" or prequantized:  # a GPTQ/AWQ base is frozen and prepared like a QLoRA one
        from ember.models.compat import keep_4bit_trainable_on_cpu, keep_gptq_trainable_on_cpu

        keep_4bit_trainable_on_cpu(model)
        keep_gptq_trainable_on_cpu(model)
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    if parts is not None:
        targets = _image_text_targets(model, lora_targets(method, family), method, parts)
        to_save = list(method.modules_to_save) + ([parts.projector] if method.train_projector else [])
    else:
        targets = lora_targets(method, family)
        if prequantized and targets == "all-linear":  # peft's "all-linear" matches nn.Linear only
            targets = linear_targets(model)
        targets = _in_last_layers(model, targets, method.lora_layers)
        to_save = list(method.modules_to_save)
    config = LoraConfig(
        r=method.rank,
        lora_alpha=method.alpha,
        lora_dropout=method.dropout,
        target_modules=targets,
        modules_to_save=to_save or None,
        trainable_token_indices=_token_layers(model, new_token_rows) if new_token_rows else None,
        use_rslora=method.rslora,
        use_dora=method.dora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    if method.fused and method.type == "lora" and not prequantized and not method.dora:
        from ember.models.fused_lora import register_fused_lora

        register_fused_lora(config)  # float bases only: quantized layers keep peft's dispatch (DoRA: peft's variant)
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise ConfigError(f"LoRA could not be applied ({exc}); check method.targets / method.modules_to_save") from None


def _token_layers(model, rows: Sequence[int]) -> dict[str, list[int]]:
    """The embedding and output layers' names, each with `rows` (peft ties the two when the model ties them)."""
    layers = [model.get_input_embeddings(), model.get_output_embeddings()]
    names = {id(m): name for name, m in model.named_modules()}
    return {names[id(layer)]: list(rows) for layer in layers if layer is not None and id(layer) in names}


def decoder_stack(model) -> tuple[str, torch.nn.ModuleList]:
    """The longest ModuleList of the model and its name: its stack of decoder blocks, whatever the family calls it."""
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise ConfigError("could not find the model's decoder layers (method.type=freeze / method.lora_layers)")
    return max(lists, key=lambda item: len(item[1]))


def decoder_layers(model) -> torch.nn.ModuleList:
    return decoder_stack(model)[1]


def _in_last_layers(model, targets: Any, last: Optional[int]) -> Any:
    """`targets` restricted to the last `last` decoder layers, as full module names (peft matches them exactly).

    Nothing below the lowest adapted layer needs a gradient, so autograd stops there: on a CPU, adapting the top 8
    of SmolLM2's 30 layers took 44% less time per step than adapting all of them (bench/train_throughput.py).
    """
    if last is None:
        return targets
    prefix, layers = decoder_stack(model)
    first = max(len(layers) - last, 0)
    names = []
    for index in range(first, len(layers)):
        for name, module in layers[index].named_modules():
            wanted = isinstance(module, torch.nn.Linear) if targets == "all-linear" else any(
                name == t or name.endswith("." + t) for t in targets)
            if wanted and name:
                names.append(f"{prefix}.{index}.{name}")
    if not names:
        raise ConfigError(f"method.targets={targets!r} matched no module in the last {last} decoder layers")
    return names


def _vision_trainable(name: str, parts, method: MethodConfig, default: bool) -> bool:
    """Whether a parameter of an image-text model trains: tower and projector only when asked, the rest `default`."""
    from ember.models.vision import part_of

    where = part_of(name, parts)
    if where == "projector":
        return method.train_projector
    if where == "tower":
        return method.train_vision
    return default


def _image_text_targets(model, targets: Any, method: MethodConfig, parts) -> list[str]:
    """Full names of the Linear modules LoRA adapts in an image-text model: `targets` inside the language model
    (its last `method.lora_layers` layers when set), plus every Linear of the vision tower with train_vision (the
    projector, trained whole with train_projector, is left out)."""
    from ember.models.vision import language_model, part_of

    lm_name, lm = language_model(model, parts)
    stack, layers = decoder_stack(lm)
    first = len(layers) - method.lora_layers if method.lora_layers is not None else 0
    layer_prefix = f"{lm_name}.{stack}."
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        where = part_of(name, parts)
        if where == "tower" and method.train_vision:
            names.append(name)
        elif where == "language":
            if targets != "all-linear" and not any(name == t or name.endswith("." + t) for t in targets):
                continue
            index = name[len(layer_prefix):].split(".")[0] if name.startswith(layer_prefix) else ""
            if first > 0 and not (index.isdigit() and int(index) >= first):
                continue
            names.append(name)
    if not names:
        raise ConfigError(f"method.targets={targets!r} matched no module of the language model '{lm_name}'")
    return names


def _freeze(model, method: MethodConfig, parts=None):
    for p in model.parameters():
        p.requires_grad_(False)
    if method.trainable_modules:
        hits = 0
        for name, p in model.named_parameters():
            if any(key in name for key in method.trainable_modules):
                p.requires_grad_(True)
                hits += 1
        if hits == 0:
            raise ConfigError(f"method.trainable_modules={method.trainable_modules} matched no parameter")
    else:
        if parts is not None:
            from ember.models.vision import language_model

            layers = decoder_layers(language_model(model, parts)[1])
        else:
            layers = decoder_layers(model)
        n = min(method.trainable_layers, len(layers))
        for layer in list(layers)[len(layers) - n:]:
            for p in layer.parameters():
                p.requires_grad_(True)
    if parts is not None:
        for name, p in model.named_parameters():
            if not p.requires_grad and _vision_trainable(name, parts, method, default=False):
                p.requires_grad_(True)
    return model


def store_frozen_linears_in(model, dtype: torch.dtype) -> int:
    """Store the weights of frozen `nn.Linear` layers in `dtype` once, instead of in fp32.

    Under autocast to `dtype` every matmul casts its fp32 weight to `dtype` first, on every forward and backward: the
    math is the same when the weight is stored that way, while the per-step copies (a fifth of a SmolLM2 LoRA step on
    a CPU) and half the frozen weights' memory go away. Trainable layers keep fp32 master weights; a weight shared
    with the input embeddings (tied lm_head) stays, since lookups are not autocast. Returns the layers changed."""
    embedding = model.get_input_embeddings().weight if hasattr(model, "get_input_embeddings") else None
    changed = 0
    for module in model.modules():
        if type(module) is not torch.nn.Linear:  # exactly Linear: not LoRA wrappers, not quantized layers
            continue
        weight = module.weight
        if weight.requires_grad or weight.dtype != torch.float32 or weight is embedding:
            continue
        if module.bias is not None and module.bias.requires_grad:
            continue
        module.to(dtype)
        changed += 1
    return changed


def keep_adapter_inputs_in_autocast_dtype(model) -> int:
    """Turn off PEFT's cast of each adapter layer's input to the adapter weights' dtype (its public
    `cast_input_dtype_enabled` switch), for training under autocast only.

    With fp32 adapter weights PEFT copies every bf16 activation to fp32 before the adapter, and autocast copies it
    straight back to bf16 for the matmul: the same numbers, two copies of every projection's input per forward and
    again in backward. Returns the layers changed."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    changed = 0
    for module in model.modules():
        if isinstance(module, BaseTunerLayer) and getattr(module, "cast_input_dtype_enabled", False):
            module.cast_input_dtype_enabled = False
            changed += 1
    return changed


def parameter_counts(model) -> tuple[int, int]:
    trainable = sum(_numel(p) for p in model.parameters() if p.requires_grad)
    total = sum(_numel(p) for p in model.parameters())
    return trainable, total


def _numel(p: torch.nn.Parameter) -> int:
    return getattr(p, "ds_numel", p.numel())  # a DeepSpeed ZeRO-3 parameter holds a shard; ds_numel is its full size


def describe_parameters(model) -> str:
    trainable, total = parameter_counts(model)
    return f"trainable params: {_human(trainable)} ({trainable:,}) || all params: {_human(total)} ({total:,}) || trainable: {100 * trainable / total:.2f}%"


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def embedding_parameters(model) -> list[torch.nn.Parameter]:
    return [p for name, p in model.named_parameters() if p.requires_grad and any(k in name for k in EMBEDDING_NAMES)]
