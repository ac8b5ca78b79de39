"""Qwen2-VL through Ember where torchvision is installed (a GPU machine): a tiny random Qwen2-VL whose processor is
built as on the CPU machines (`ember.models.compat.ImageOnlyQwen2VLProcessor`: transformers' Qwen2VLProcessor less
its video part, around the SmolLM2 tokenizer + vision tokens) and saved under the stock class name, so here every
load goes through the stock `AutoProcessor` -> Qwen2VLProcessor (recorded as `processor_class`). The CPU
counterpart is tests/vision/test_qwen2_vl.py.

Checks, each recorded in OUT/gpu_vision.json: Ember's training ids equal the processor on the rendered chat; labels
are -100 on every image token; `ember train` (LoRA, projector = the merger, trained) runs on the GPU; the engine's
prefill logits (M-RoPE positions from the model's get_rope_index) equal the model's own forward on the processor's
inputs; greedy tokens equal transformers' generate, for the first turn and for a second turn with the image in the
history; the merged export loads with AutoModelForImageTextToText + AutoProcessor and gives the same logits.

    python bench/gpu_vision.py OUT_DIR [TOKENIZER_DIR]     # TOKENIZER_DIR: SmolLM2's tokenizer (.whl/smollm2)
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def draw(colour) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (56, 56), "white")
    ImageDraw.Draw(image).ellipse((8, 8, 48, 48), fill=colour)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def build(tokenizer_dir: str, out: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor

    from ember.models.compat import ImageOnlyQwen2VLProcessor

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                                                          "<|video_pad|>"]}, replace_extra_special_tokens=False)
    processor = ImageOnlyQwen2VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=56 * 56),
                                          tokenizer=tok)
    ids = {k: tok.convert_tokens_to_ids(t) for k, t in (("image_token_id", "<|image_pad|>"),
           ("video_token_id", "<|video_pad|>"), ("vision_start_token_id", "<|vision_start|>"),
           ("vision_end_token_id", "<|vision_end|>"))}
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3), **ids)
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def main() -> int:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = sys.argv[2] if len(sys.argv) > 2 else ".whl/smollm2"
    result: dict = {}
    try:
        run(tokenizer_dir, result)
    except Exception:  # recorded: the point of the script is the record
        result["error"] = traceback.format_exc()
    (out / "gpu_vision.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: v for k, v in result.items() if k != "error"}, indent=2, default=str))
    print(result.get("error", ""))
    return 0


def run(tokenizer_dir: str, result: dict) -> None:
    import torch
    import transformers

    result["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                          "cuda": torch.cuda.is_available()}
    import torchvision

    result["versions"]["torchvision"] = torchvision.__version__
    from ember.config import from_dict, validate
    from ember.config.schema import EmberConfig
    from ember.data.conversation import Message
    from ember.data.images import open_image
    from ember.data.render import IGNORE_INDEX
    from ember.inference.completion import GenerationOptions, Row
    from ember.inference.engine import Engine
    from ember.training.prepare import prepare_data
    from ember.training.run import train

    work = Path(tempfile.mkdtemp(prefix="ember-qwen2vl-"))
    model_dir = build(tokenizer_dir, work / "model")
    (work / "img").mkdir()
    rows = []
    for colour in ("red", "green", "blue", "yellow"):
        (work / "img" / f"{colour}.png").write_bytes(draw(colour))
        rows.append({"conversations": [{"from": "human", "value": "<image>Colour?"}, {"from": "gpt", "value": colour}],
                     "images": [f"img/{colour}.png"]})
    (work / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = {"stage": "sft", "model": {"name_or_path": str(model_dir), "dtype": "float32"},
           "data": {"datasets": [{"path": str(work / "data.jsonl")}], "max_length": 256, "cache": False,
                    "shuffle": False, "system": "Describe images."},
           "method": {"type": "lora", "rank": 4, "alpha": 8, "dropout": 0.0, "train_projector": True},
           "train": {"max_steps": 3, "per_device_train_batch_size": 2, "learning_rate": 1e-2, "logging_steps": 1,
                     "save_strategy": "no", "report_to": "none", "bf16": False},
           "output": {"dir": str(work / "run")}}
    cfg = validate(from_dict(EmberConfig, raw, "gpu_vision"))
    prepared = prepare_data(cfg)
    processor = prepared.processor
    result["processor_class"] = type(processor).__name__  # Qwen2VLProcessor: the saved files load as the stock one
    sample = prepared.data.train[0]
    msgs = [Message("system", "Describe images."), Message("user", "<image>Colour?", images=[draw("red")]),
            Message("assistant", "red")]
    text = prepared.renderer.render_text(msgs)
    reference = processor(text=[text], images=[open_image(draw("red"))], add_special_tokens=False)["input_ids"][0]
    image_id = processor.image_token_id
    result["ids_equal_processor"] = sample.input_ids == list(reference)
    result["image_tokens"] = sample.input_ids.count(image_id)
    result["labels_skip_image_tokens"] = all(label == IGNORE_INDEX for token, label in
                                             zip(sample.input_ids, sample.labels) if token == image_id)
    result["collator_keys"] = sorted(prepared.stage.collator(prepared.tokenizer, False)(
        [prepared.stage.dataset(prepared.data.train)[0]]))
    metrics = train(cfg).metrics
    result["train_loss"] = metrics.get("train_loss")

    engine = Engine.load(str(work / "run"))
    options = GenerationOptions(max_new_tokens=6)
    checks = []
    first = [Message("user", "<image>Colour?", images=[draw("blue")])]
    answer = engine.generate(first, options).text
    second = first + [Message("assistant", answer), Message("user", "And again?")]
    for name, conv in (("first turn", first), ("image in history", second)):
        ids, images = engine.prompt(conv)
        row = Row(ids, options.max_new_tokens, images=images)
        engine.generate_rows([row], options)
        inputs = processor(text=[engine.renderer.prompt_text(engine.with_default_system(conv))],
                           images=[open_image(draw("blue"))], add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            direct = engine.model(**inputs).logits[:, -1]
            decoder = engine.decoder()
            decoder.add(Row(ids, 1, images=images), options)
            prefill = decoder._prefill_chunk(decoder.prefilling[0], len(ids))
            hf = engine.model.generate(**inputs, max_new_tokens=6, do_sample=False,
                                       eos_token_id=sorted(engine.stop_ids), pad_token_id=0)
        checks.append({"case": name, "prompt_ids_equal_processor": inputs["input_ids"][0].tolist() == ids,
                       "rope_offset": images.offset,
                       "prefill_max_abs_diff": float((prefill - direct).abs().max()),
                       "tokens_equal_generate": row.ids == hf[0, len(ids):].tolist(),
                       "ember": row.ids, "transformers": hf[0, len(ids):].tolist()})
    result["generation"] = checks

    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ember.export.merge import export

    merged_dir = export(str(work / "run"), str(work / "merged"))
    merged = AutoModelForImageTextToText.from_pretrained(merged_dir, dtype=torch.float32).eval()
    merged_processor = AutoProcessor.from_pretrained(merged_dir)
    text = engine.renderer.prompt_text(engine.with_default_system(first))
    inputs = merged_processor(text=[text], images=[open_image(draw("blue"))], add_special_tokens=False,
                              return_tensors="pt")
    with torch.inference_mode():
        diff = (merged(**inputs).logits[:, -1] - engine.model(**inputs).logits[:, -1]).abs().max()
    result["export_max_abs_logit_diff"] = float(diff)


if __name__ == "__main__":
    raise SystemExit(main())
