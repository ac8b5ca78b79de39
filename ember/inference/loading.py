"""Load a model for generation exactly as it was trained: weights (+ adapter), tokenizer, template."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from ember.config.loader import from_dict
from ember.config.schema import ModelConfig
from ember.data.render import Renderer
from ember.errors import ConfigError
from ember.core.artifacts import RUN_CONFIG, read_template_info


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    renderer: Optional[Renderer]  # None when the tokenizer has no chat template
    name: str
    default_system: Optional[str] = None  # the training run's `data.system`, given when a request has none


def _run_model_config(directory: Path) -> Optional[ModelConfig]:
    """The `model:` section a run was trained with (to rebuild its base under an adapter)."""
    import yaml

    path = directory / RUN_CONFIG
    if not path.is_file():
        return None
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return from_dict(ModelConfig, raw.get("model", {}), where=str(path))


def _image_tokens(net, tokenizer, token_dir: Optional[Path], base_cfg: ModelConfig):
    """An image-text model's `ImageTokens`: its processor from the run (or export) directory, else from its base."""
    from ember.models.loading import detect_family, resolve_source
    from ember.models.vision import image_tokens, is_image_text, load_processor

    if not is_image_text(net.config):
        return None
    has_processor = token_dir is not None and any(
        (token_dir / name).is_file() for name in ("processor_config.json", "preprocessor_config.json"))
    source = str(token_dir) if has_processor else resolve_source(base_cfg.name_or_path, base_cfg.hub, base_cfg.revision)
    processor = load_processor(source, tokenizer, trust_remote_code=bool(base_cfg.trust_remote_code),
                               model_type=getattr(net.config, "model_type", ""))
    family = detect_family(getattr(net.config, "model_type", ""), base_cfg.family)
    return image_tokens(processor, family, net.config)


def load_for_inference(model: str, adapter: Optional[str] = None, dtype: str = "auto",
                       dequantize: bool = False) -> LoadedModel:
    """Load a model for chat, serve, eval and export.

    Args:
        model: an Ember output dir (adapter or full weights), a HF dir, a .gguf file, a registry name or a hub id.
        adapter: a LoRA adapter dir to put on `model`.
        dequantize: a GPTQ/AWQ base becomes plain `nn.Linear` layers before the adapter attaches (export merges).

    Raises:
        ConfigError: no adapter at `adapter`; `model` (or the adapter's base) is neither a local model nor a hub
            repository that can be had (the hub is off and it is not cached, or the hub does not have it).
    """
    import torch
    from transformers import AutoTokenizer

    from ember.models.loading import check_reachable, hub_model_id, load_model, load_tokenizer

    path = Path(model)
    adapter_dir = Path(adapter) if adapter else (path if (path / "adapter_config.json").is_file() else None)
    if adapter_dir is not None and not (adapter_dir / "adapter_config.json").is_file():
        raise ConfigError(f"--adapter {adapter_dir}: no adapter_config.json there")

    if adapter_dir is not None and adapter_dir == path:
        base_cfg = _run_model_config(path)
        if base_cfg is None:
            import json

            base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
            base_cfg = ModelConfig(name_or_path=base)
    else:
        base_cfg = ModelConfig(name_or_path=model)
    base_cfg.dtype = dtype if dtype != "auto" else ("auto" if torch.cuda.is_available() else "float32")
    # A missing run directory written ORG/NAME-like (runs/typo) reads as a hub id: say so in one line, not with
    # transformers' download traceback.
    key = "--model" if base_cfg.name_or_path == model else f"{adapter_dir}'s base model"
    check_reachable(replace(base_cfg, tokenizer=None), key)  # a run's tokenizer is read from the run directory

    token_dir = adapter_dir if adapter_dir is not None else (path if (path / "tokenizer_config.json").is_file() else None)
    try:
        tokenizer = AutoTokenizer.from_pretrained(token_dir) if token_dir else load_tokenizer(base_cfg)
        net = load_model(base_cfg, vocab_size=len(tokenizer))
    except OSError as exc:  # the hub is on but does not have it (or cannot be reached)
        hub = hub_model_id(base_cfg)
        if hub is None:
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{key}={base_cfg.name_or_path}: there is no local directory "
                          f"{Path(base_cfg.name_or_path).expanduser().absolute()}, and the hub repository {hub} "
                          f"could not be loaded ({reason}); give an existing run or model directory, or a hub id "
                          "you can access") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if dequantize:
        from ember.models.quantized import dequantize as dequantize_layers, is_prequantized

        if is_prequantized(net):
            dequantize_layers(net)
    if net.get_input_embeddings().weight.shape[0] < len(tokenizer):
        net.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
    if adapter_dir is not None:
        from peft import PeftModel

        net = PeftModel.from_pretrained(net, str(adapter_dir))
    net.eval()
    info = read_template_info(token_dir) if token_dir else None
    # A base model without a chat template still scores plain prompts (ember eval bench); chat needs the template.
    renderer = Renderer(tokenizer) if tokenizer.chat_template else None
    if renderer is not None and info and info.get("stop_strings"):
        renderer.stop_strings = list(info["stop_strings"])
        renderer.stop_token_ids = list(info.get("stop_token_ids") or renderer.stop_token_ids)
    if renderer is not None:
        renderer.images = _image_tokens(net, tokenizer, token_dir, base_cfg)
    name = path.name if path.exists() else model
    return LoadedModel(net, tokenizer, renderer, name, (info or {}).get("default_system"))
