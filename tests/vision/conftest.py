"""Image-text fixtures: a tiny random LLaVA built offline (ember.models.compose: a 2-layer Llama with the SmolLM2
tokenizer + `<image>`, a 2-layer CLIP tower, transformers' own LlavaProcessor), drawn images, and a trained run."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

TINY_TEXT = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 16}
COLOURS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 60, 220), "yellow": (235, 210, 40)}


def draw(colour: str, shape: str = "circle", size: int = 32) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), "white")
    pen = ImageDraw.Draw(image)
    box = (size // 8, size // 8, size - size // 8, size - size // 8)
    (pen.ellipse if shape == "circle" else pen.rectangle)(box, fill=COLOURS[colour])
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> Path:
    from ember.models.compose import VisionTower, compose_llava

    return compose_llava("smollm2-135m-instruct", tmp_path_factory.mktemp("llava") / "model", VisionTower(),
                         language_config_overrides=dict(TINY_TEXT))


@pytest.fixture(scope="session")
def llava_processor(tiny_llava):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_llava)


@pytest.fixture
def image_data(tmp_path) -> Path:
    """Caption records in the OpenAI-parts shape (paths relative to the file) and the LLaMA-Factory shape."""
    folder = tmp_path / "captions"
    (folder / "img").mkdir(parents=True)
    openai, sharegpt = [], []
    for i, colour in enumerate(COLOURS):
        (folder / "img" / f"{colour}.png").write_bytes(draw(colour))
        openai.append({"messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"img/{colour}.png"}},
                                         {"type": "text", "text": "What colour is it?"}]},
            {"role": "assistant", "content": f"It is {colour}."}]})
        sharegpt.append({"conversations": [{"from": "human", "value": "<image>Name the colour."},
                                           {"from": "gpt", "value": colour}], "images": [f"img/{colour}.png"]})
    (folder / "openai.jsonl").write_text("".join(json.dumps(r) + "\n" for r in openai), encoding="utf-8")
    (folder / "sharegpt.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sharegpt), encoding="utf-8")
    return folder


@pytest.fixture
def vision_config(tmp_path, tiny_llava, image_data):
    """vision_config("method.train_projector=true", ...) -> a validated `EmberConfig` on the tiny LLaVA."""
    from ember.config import apply_override, from_dict, validate
    from ember.config.schema import EmberConfig

    def build(*overrides: str):
        raw = {
            "stage": "sft",
            "model": {"name_or_path": str(tiny_llava), "dtype": "float32"},
            "data": {"datasets": [{"path": str(image_data / "openai.jsonl")},
                                  {"path": str(image_data / "sharegpt.jsonl")}],
                     "max_length": 128, "cache": False, "shuffle": False, "system": "Describe images."},
            "method": {"type": "lora", "rank": 4, "alpha": 8, "dropout": 0.0},
            "train": {"max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-2,
                      "lr_scheduler_type": "constant", "logging_steps": 1, "bf16": False, "save_strategy": "no",
                      "report_to": "none", "seed": 0},
            "output": {"dir": str(tmp_path / "run")},
        }
        for item in overrides:
            apply_override(raw, item)
        return validate(from_dict(EmberConfig, raw, "test"))

    return build


@pytest.fixture(scope="module")
def trained_llava(tmp_path_factory, tiny_llava):
    """A 4-step LoRA run (projector trained) on the tiny LLaVA: the output directory."""
    from ember.config import from_dict, validate
    from ember.config.schema import EmberConfig
    from ember.training.run import train

    folder = tmp_path_factory.mktemp("trained")
    (folder / "img").mkdir()
    records = []
    for colour in COLOURS:
        (folder / "img" / f"{colour}.png").write_bytes(draw(colour))
        records.append({"conversations": [{"from": "human", "value": "<image>Colour?"}, {"from": "gpt",
                        "value": colour}], "images": [f"img/{colour}.png"]})
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    raw = {"stage": "sft", "model": {"name_or_path": str(tiny_llava), "dtype": "float32"},
           "data": {"datasets": [{"path": str(folder / "data.jsonl")}], "max_length": 128, "cache": False,
                    "system": "Describe images."},
           "method": {"type": "lora", "rank": 4, "alpha": 8, "dropout": 0.0, "train_projector": True},
           "train": {"max_steps": 4, "per_device_train_batch_size": 2, "learning_rate": 1e-2,
                     "lr_scheduler_type": "constant", "logging_steps": 1, "bf16": False, "save_strategy": "no",
                     "report_to": "none", "seed": 0},
           "output": {"dir": str(folder / "run")}}
    train(validate(from_dict(EmberConfig, raw, "test")))
    return folder / "run"
