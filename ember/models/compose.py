"""Build a LLaVA-architecture image-text model around an existing causal LM: LLaVA's own first-stage starting point.

The language model keeps its weights (and its tokenizer, with an `<image>` token added); the vision tower (CLIP
architecture) and the projector are new and randomly initialised, and the processor is transformers' own
`LlavaProcessor` with a PIL `CLIPImageProcessor`. Training the projector (`method.train_projector`) with LoRA on the
language model then teaches the model to read images (docs/multimodal.md). Everything is built offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

IMAGE_TOKEN = "<image>"


@dataclass
class VisionTower:
    """The new CLIP vision tower: `image_size` pixels square, cut into `patch_size` patches (one token each)."""

    image_size: int = 32
    patch_size: int = 8
    hidden_size: int = 64
    layers: int = 2
    heads: int = 2

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def compose_llava(language_model: str, out: Path, tower: Optional[VisionTower] = None, seed: int = 0,
                  language_config_overrides: Optional[dict] = None) -> Path:
    """Write a LLaVA model directory (weights, config, tokenizer, processor) to `out`.

    Args:
        language_model: the causal LM (an Ember model name, a local directory or a .gguf file); with
            `language_config_overrides`, a randomly initialised model of its architecture and those sizes instead.
        out: an empty or missing directory.
        tower: the vision tower's sizes (default: 32x32 images in 16 patches, 2 layers of width 64).
        seed: for the new weights.

    Returns:
        `out`, loadable with `AutoModelForImageTextToText` and `AutoProcessor`.
    """
    import torch
    from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, CLIPVisionConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from ember.models.loading import resolve_source

    tower = tower or VisionTower()
    source = resolve_source(language_model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    torch.manual_seed(seed)
    if language_config_overrides:
        text_config = AutoConfig.from_pretrained(source)
        for key, value in language_config_overrides.items():
            setattr(text_config, key, value)
        text_model = AutoModelForCausalLM.from_config(text_config, dtype=torch.float32)
    else:
        text_model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        text_config = text_model.config
    rows = text_model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        text_model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    text_config = text_model.config
    vision = CLIPVisionConfig(hidden_size=tower.hidden_size, intermediate_size=4 * tower.hidden_size,
                              num_hidden_layers=tower.layers, num_attention_heads=tower.heads,
                              image_size=tower.image_size, patch_size=tower.patch_size)
    config = LlavaConfig(vision_config=vision, text_config=text_config,
                         image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                         vision_feature_layer=-1, vision_feature_select_strategy="default",
                         tie_word_embeddings=getattr(text_config, "tie_word_embeddings", False))
    model = LlavaForConditionalGeneration(config)
    model.model.language_model.load_state_dict(text_model.model.state_dict())
    model.lm_head.load_state_dict(text_model.lm_head.state_dict())
    model.config.pad_token_id = tokenizer.pad_token_id
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": tower.image_size},
                                            crop_size={"height": tower.image_size, "width": tower.image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=tower.patch_size,
                               vision_feature_select_strategy="default", image_token=IMAGE_TOKEN,
                               num_additional_image_tokens=1)  # CLIP's class token, which "default" drops
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m ember.models.compose --language-model NAME --out DIR`: build a LLaVA model around NAME."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m ember.models.compose", description=__doc__.splitlines()[0])
    p.add_argument("--language-model", default="smollm2-135m-instruct", help="Ember model name, HF dir or .gguf")
    p.add_argument("--out", required=True, help="the new model directory")
    p.add_argument("--image-size", type=int, default=VisionTower.image_size)
    p.add_argument("--patch-size", type=int, default=VisionTower.patch_size)
    p.add_argument("--vision-layers", type=int, default=VisionTower.layers)
    p.add_argument("--vision-hidden", type=int, default=VisionTower.hidden_size)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    tower = VisionTower(args.image_size, args.patch_size, args.vision_hidden, args.vision_layers)
    print(compose_llava(args.language_model, Path(args.out), tower, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
