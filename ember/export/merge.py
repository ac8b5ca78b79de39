"""`ember export`: fold a LoRA adapter into its base and write a standalone model (HF directory or GGUF file).

The merged directory loads with plain `transformers` — no Ember, no peft — and carries what chat needs: the
tokenizer, the chat template the model was trained with, and a generation config whose `eos_token_id` lists the
template's stop tokens, so `generate` ends a turn where training taught it to.

The base is loaded the way chat loads it (fp32 on CPU), so a QLoRA adapter is merged into the de-quantised base:
the merged weights equal base + B·A exactly, but the 4-bit base the adapter was trained against differed from
the fp32 base by the quantisation error (NF4: typically 1e-2 relative per weight), so the merged model's logits
differ from the quantised base + adapter by about that much. A GPTQ/AWQ base (a checkpoint quantized before
training) is instead de-quantised to exactly the weights its kernel multiplies by, so there the merged model equals
the quantised base + adapter up to fp32 rounding (tests/models/test_gptq.py measures it). Embedding and lm_head
keep the model's row count, which may exceed the tokenizer's size after a vocabulary extension (rows padded to a multiple of 64).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ember.errors import ConfigError

log = logging.getLogger(__name__)
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class Merged:
    model: object  # a plain transformers model, adapter folded in
    tokenizer: object
    stop_token_ids: list[int]
    source: str  # where the weights came from (for the export record)
    template_info: Optional[dict]
    processor: Optional[object] = None  # an image-text model's processor (holds `tokenizer`), saved beside it


def merge(model: str, adapter: Optional[str] = None) -> Merged:
    """Load `model` (+ `adapter`, or the adapter inside an Ember output dir) and fold LoRA into the weights."""
    from ember.inference.loading import load_for_inference
    from ember.core.artifacts import read_template_info

    loaded = load_for_inference(model, adapter, dtype="float32", dequantize=True)
    net = loaded.model
    if hasattr(net, "merge_and_unload"):
        net = net.merge_and_unload()
    _untie_if_diverged(net)
    token_dir = Path(adapter) if adapter else Path(model)
    info = read_template_info(token_dir) if token_dir.is_dir() else None
    images = loaded.renderer.images if loaded.renderer is not None else None
    return Merged(net, loaded.tokenizer, list(loaded.renderer.stop_token_ids), model, info,
                  images.processor if images is not None else None)


def _untie_if_diverged(model) -> None:
    """An adapter that trained embed_tokens and lm_head separately (modules_to_save) leaves them different."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or not getattr(model.config, "tie_word_embeddings", False):
        return
    if head.weight is not embed.weight and not head.weight.data.equal(embed.weight.data):
        log.info("lm_head differs from the embeddings after merging: saving them untied")
        model.config.tie_word_embeddings = False


def _configure_generation(merged: Merged) -> None:
    from transformers import GenerationConfig

    model, tok = merged.model, merged.tokenizer
    gc = model.generation_config if getattr(model, "generation_config", None) is not None else GenerationConfig()
    stops = merged.stop_token_ids or ([tok.eos_token_id] if tok.eos_token_id is not None else [])
    gc.eos_token_id = stops[0] if len(stops) == 1 else stops
    gc.pad_token_id = tok.pad_token_id
    if tok.bos_token_id is not None:
        gc.bos_token_id = tok.bos_token_id
    model.generation_config = gc
    model.config.pad_token_id = tok.pad_token_id


def save_merged(merged: Merged, to: Path, dtype: str = "float32") -> Path:
    """A standalone HF directory: weights, config, generation config, tokenizer with its chat template."""
    import torch

    from ember.export.portable import make_portable

    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    to = Path(to)
    if to.exists() and any(to.iterdir()):
        raise ConfigError(f"{to} is not empty: choose a new --to directory (export never overwrites files)")
    _configure_generation(merged)
    model = merged.model.to(getattr(torch, dtype))
    model.config.use_cache = True  # training runs switch it off; generation wants it
    model.save_pretrained(to)
    if merged.processor is not None:  # an image-text model: AutoProcessor loads it back (image processor + tokenizer)
        merged.processor.save_pretrained(to)
    merged.tokenizer.save_pretrained(to)
    make_portable(to, merged.tokenizer)  # transformers 4.45+ reads it as 5.x does
    if merged.template_info is not None:
        (to / "ember_template.json").write_text(json.dumps(merged.template_info, indent=2, ensure_ascii=False),
                                                encoding="utf-8")
    rows = model.get_input_embeddings().weight.shape[0]
    record = {"source": merged.source, "dtype": dtype, "embedding_rows": rows, "tokenizer_size": len(merged.tokenizer),
              "stop_token_ids": merged.stop_token_ids}
    (to / "ember_export.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    return to


def export(model: str, to: str, adapter: Optional[str] = None, fmt: str = "hf", gguf_type: str = "f16",
           dtype: str = "float32") -> Path:
    """`ember export`: returns the directory (hf) or file (gguf) written."""
    from ember.export.gguf import check_type, write_gguf

    if fmt not in ("hf", "gguf"):
        raise ConfigError(f"--format {fmt!r}: choose hf (a merged transformers directory) or gguf")
    if fmt == "hf" and Path(to).suffix.lower() == ".gguf":
        # --format alone chooses what is written; a directory named *.gguf would read back as a (missing) GGUF file
        raise ConfigError(f"--to {to} names a GGUF file, but --format hf (the default) writes a directory: add "
                          "--format gguf to write a GGUF file, or give --to a directory name")
    if fmt == "gguf":
        check_type(gguf_type)  # before the (slow) merge
    merged = merge(model, adapter)
    target = Path(to)
    if fmt == "hf":
        return save_merged(merged, target, dtype)
    if merged.processor is not None:
        raise ConfigError("--format gguf: an image-text model's vision tower does not go into one GGUF file (llama.cpp "
                          "reads it from a separate mmproj file); export --format hf")
    if target.suffix != ".gguf":
        target = target / f"{Path(model).name or 'model'}-{gguf_type}.gguf"
    if target.exists():
        raise ConfigError(f"{target} exists: choose another --to (export never overwrites files)")
    tmp = target.with_name(target.name + ".partial")
    try:
        write_gguf(merged.model, merged.tokenizer, tmp, gguf_type, merged.stop_token_ids, name=Path(model).name)
        shutil.move(str(tmp), target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
