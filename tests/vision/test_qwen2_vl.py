"""Qwen2-VL through Ember on a CPU without torchvision: a tiny random Qwen2-VL (2 text layers of 64, a 1-block vision
tower with 4-pixel patches, 2x2 merge) and transformers' own Qwen2-VL processor without its video part
(`ember.models.compat.ImageOnlyQwen2VLProcessor`, the PIL image processor around the SmolLM2 tokenizer + the vision
tokens). Ids and labels, batches and their loss, `ember train`, generation with M-RoPE positions and the merged
export, each against transformers' own classes."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from ember.data.conversation import Message
from ember.data.render import IGNORE_INDEX
from ember.inference.completion import GenerationOptions, Row

SHAPES = Path(__file__).resolve().parents[2] / "examples" / "data" / "shapes"
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
GREEDY = GenerationOptions(max_new_tokens=6)
SCORED = GenerationOptions(max_new_tokens=6, top_logprobs=0)  # greedy, with each token's log-probability
SYSTEM = "You describe pictures in a few words."


def build_qwen2_vl(out: Path, tokenizer_dir: str, model_type: str = "qwen2_vl") -> Path:
    """A tiny random Qwen2-VL (or Qwen2.5-VL) with its processor, saved to `out`."""
    import transformers
    from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

    from ember.models import compat

    qwen25 = model_type == "qwen2_5_vl"
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.add_special_tokens({"additional_special_tokens": VISION_TOKENS}, replace_extra_special_tokens=False)
    # 4-pixel patches merged 2x2: an image becomes (h/8)*(w/8) tokens, between 8x8 and 64x64 pixels after resizing
    images = Qwen2VLImageProcessorPil(patch_size=4, temporal_patch_size=2, merge_size=2,
                                      size={"shortest_edge": 8 * 8, "longest_edge": 64 * 64})
    processor_class = compat.ImageOnlyQwen2_5_VLProcessor if qwen25 else compat.ImageOnlyQwen2VLProcessor
    processor = processor_class(image_processor=images, tokenizer=tok)
    ids = {key: tok.convert_tokens_to_ids(token) for key, token in (
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"))}
    special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                                        "rope_theta": 1e4}, **special)
    if qwen25:  # windowed attention over 2x2 merged units, the one block attends fully
        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, window_size=16,
                      fullatt_block_indexes=[0])
    else:
        vision = dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2)
    vision.update(patch_size=4, spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    prefix = "Qwen2_5_VL" if qwen25 else "Qwen2VL"
    config = getattr(transformers, f"{prefix}Config")(text_config=text, vision_config=vision, **ids, **special)
    torch.manual_seed(0)
    getattr(transformers, f"{prefix}ForConditionalGeneration")(config).save_pretrained(out)
    processor.save_pretrained(out)
    return out


def picture(colour: tuple[int, int, int], width: int, height: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="PNG")
    return out.getvalue()


def pil(png: bytes):
    from ember.data.images import open_image

    return open_image(png)


@pytest.fixture(scope="session")
def tiny_qwen2_vl(tmp_path_factory, smollm2_dir) -> Path:
    return build_qwen2_vl(tmp_path_factory.mktemp("qwen2vl") / "model", smollm2_dir)


@pytest.fixture(scope="module")
def shapes_subset(tmp_path_factory) -> Path:
    """The first 4 records of examples/data/shapes/train.jsonl and their images (32x32 PNGs)."""
    folder = tmp_path_factory.mktemp("shapes")
    (folder / "images").mkdir()
    lines = (SHAPES / "train.jsonl").read_text(encoding="utf-8").splitlines()[:4]
    for line in lines:
        url = json.loads(line)["messages"][0]["content"][0]["image_url"]["url"]
        shutil.copy(SHAPES / url, folder / url)
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def _config(model: Path, data: Path, out: Path):
    from ember.config import from_dict, validate
    from ember.config.schema import EmberConfig

    raw = {"stage": "sft", "model": {"name_or_path": str(model), "dtype": "float32"},
           "data": {"datasets": [{"path": str(data)}], "max_length": 128, "cache": False, "shuffle": False,
                    "system": SYSTEM},
           "method": {"type": "lora", "rank": 4, "alpha": 8, "dropout": 0.0, "train_projector": True},
           "train": {"max_steps": 4, "per_device_train_batch_size": 2, "learning_rate": 1e-3,
                     "lr_scheduler_type": "constant", "logging_steps": 1, "bf16": False, "save_strategy": "no",
                     "report_to": "none", "seed": 0},
           "output": {"dir": str(out)}}
    return validate(from_dict(EmberConfig, raw, "test"))


# (colour, width, height, question, answer, image tokens): 32x32 is 8x8 patches, 48x24 is 6x12, merged 2x2
CASES = [((220, 30, 30), 32, 32, "<image>Colour?", "Red.", 16),
         ((40, 60, 220), 48, 24, "What is this?<image>", "A blue band.", 18)]


def _case_messages(case, answer: bool = True) -> list[Message]:
    colour, width, height, question, text, _ = case
    msgs = [Message("system", SYSTEM), Message("user", question, images=[picture(colour, width, height)])]
    return msgs + [Message("assistant", text)] if answer else msgs


@pytest.fixture(scope="module")
def sized_data(tmp_path_factory) -> Path:
    """The CASES as LLaMA-Factory records: images of two sizes, `<image>` before and after the question."""
    folder = tmp_path_factory.mktemp("sized")
    records = []
    for i, (colour, width, height, question, answer, _) in enumerate(CASES):
        (folder / f"{i}.png").write_bytes(picture(colour, width, height))
        records.append({"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
                        "images": [f"{i}.png"]})
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def prepared(tiny_qwen2_vl, sized_data, tmp_path_factory):
    from ember.training.prepare import prepare_data

    return prepare_data(_config(tiny_qwen2_vl, sized_data / "data.jsonl", tmp_path_factory.mktemp("p") / "run"))


def test_processor_needs_no_torchvision_and_saves_as_the_stock_one(tiny_qwen2_vl, smol_tokenizer):
    from transformers import Qwen2VLProcessor
    from transformers.utils import is_torchvision_available

    from ember.models.compat import ImageOnlyQwen2VLProcessor
    from ember.models.vision import load_processor

    saved = json.loads((tiny_qwen2_vl / "processor_config.json").read_text(encoding="utf-8"))
    assert saved["processor_class"] == "Qwen2VLProcessor"  # loads with the stock class where torchvision is
    tokenizer_config = json.loads((tiny_qwen2_vl / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert tokenizer_config["processor_class"] == "Qwen2VLProcessor"
    assert saved["image_processor"]["patch_size"] == saved["video_processor"]["patch_size"] == 4
    assert saved["video_processor"]["video_processor_type"] == "Qwen2VLVideoProcessor"
    processor = load_processor(str(tiny_qwen2_vl), smol_tokenizer, model_type="qwen2_vl")
    assert type(processor) is (Qwen2VLProcessor if is_torchvision_available() else ImageOnlyQwen2VLProcessor)
    assert processor.image_token == "<|image_pad|>" and "mm_token_type_ids" in processor.model_input_names


def test_ids_hold_each_images_own_token_count_and_labels_only_the_answer(prepared):
    processor = prepared.processor
    image_id = processor.image_token_id
    for sample, case in zip(prepared.data.train, CASES, strict=True):
        msgs = _case_messages(case)
        text = prepared.renderer.render_text(msgs)
        reference = processor(text=[text], images=[pil(msgs[1].images[0])], add_special_tokens=False)
        assert sample.input_ids == list(reference["input_ids"][0])
        grid = reference["image_grid_thw"][0].tolist()
        assert sample.input_ids.count(image_id) == case[-1] == grid[0] * grid[1] * grid[2] // 4
        assert sample.images == msgs[1].images
        trained = [(k, label) for k, label in enumerate(sample.labels) if label != IGNORE_INDEX]
        answer = prepared.tokenizer.encode(case[4] + "<|im_end|>", add_special_tokens=False)
        assert [label for _, label in trained] == answer  # exactly the answer and its end token
        assert [k for k, _ in trained] == list(range(trained[0][0], trained[0][0] + len(answer)))
        assert all(sample.input_ids[k] == label for k, label in trained)
        assert image_id not in sample.input_ids[trained[0][0]:]  # every image token lies in the untrained prompt
        prompt = prepared.renderer.prompt_ids(msgs[:2])  # what chat and serve feed the model
        assert prompt == sample.input_ids[:trained[0][0]]


def test_a_batch_holds_pixels_grids_and_type_ids_and_its_loss_is_the_per_row_loss(prepared, tiny_qwen2_vl):
    from transformers import AutoModelForImageTextToText

    from ember.training.losses import causal_lm_loss, trained_positions

    stage, data = prepared.stage, prepared.data.train
    rows = stage.dataset(data)
    batch = stage.collator(prepared.tokenizer, False)([rows[0], rows[1]])
    assert sorted(batch) == ["attention_mask", "image_grid_thw", "input_ids", "labels", "mm_token_type_ids",
                             "pixel_values"]
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8], [1, 6, 12]]
    assert batch["pixel_values"].shape == (8 * 8 + 6 * 12, 3 * 2 * 4 * 4)  # patches x (channels*time*patch*patch)
    image_id = prepared.processor.image_token_id
    assert torch.equal(batch["mm_token_type_ids"], (batch["input_ids"] == image_id).int())
    lengths = [len(s.input_ids) for s in data]
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths and lengths[0] != lengths[1]

    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen2_vl, dtype=torch.float32).eval()
    total, count = torch.zeros((), dtype=torch.float64), 0
    with torch.inference_mode():
        for sample, case in zip(data, CASES, strict=True):  # each row alone, unpadded, from the processor itself
            msgs = _case_messages(case)
            inputs = prepared.processor(text=[prepared.renderer.render_text(msgs)], images=[pil(msgs[1].images[0])],
                                        add_special_tokens=False, return_tensors="pt")
            assert inputs["input_ids"][0].tolist() == sample.input_ids
            logits = model(**inputs).logits[0, :-1]
            targets = torch.tensor(sample.labels[1:])
            keep = targets != IGNORE_INDEX
            total += torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum").double()
            count += int(keep.sum())
        by_hand = (total / count).float()
        assert torch.allclose(model(**batch).loss, by_hand, atol=1e-5)  # padding and M-RoPE per row are right
        labels = batch.pop("labels")
        positions = trained_positions(labels)
        kept = model(**batch, logits_to_keep=positions).logits  # Ember's trainer: logits at trained positions only
        assert torch.allclose(causal_lm_loss(kept, labels, positions=positions), by_hand, atol=1e-5)


@pytest.fixture(scope="module")
def trained(tiny_qwen2_vl, shapes_subset, tmp_path_factory) -> Path:
    """`ember train` on 4 shapes images: LoRA in the language model, the merger (projector) trained whole."""
    from ember.cli import main
    from ember.config import dump_yaml

    cfg = _config(tiny_qwen2_vl, shapes_subset / "train.jsonl", tmp_path_factory.mktemp("trained") / "run")
    path = Path(cfg.output.dir + ".yaml")
    path.write_text(dump_yaml(cfg), encoding="utf-8")
    assert main(["train", str(path)]) == 0
    return Path(cfg.output.dir)


@pytest.fixture(scope="module")
def engine(trained):
    from ember.inference.engine import Engine

    return Engine.load(str(trained))


def test_train_lowers_the_loss_and_saves_lora_and_the_merger_only(trained, tiny_qwen2_vl):
    from safetensors.torch import load_file

    history = json.loads((trained / "trainer_state.json").read_text(encoding="utf-8"))["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 4 and losses[-1] < losses[0]  # 2 epochs over the same 4 images
    adapter = load_file(str(trained / "adapter_model.safetensors"))
    merger = {k for k in adapter if ".merger." in k}
    base = load_file(str(tiny_qwen2_vl / "model.safetensors"))
    assert len(merger) == len([k for k in base if ".merger." in k]) > 0  # the projector, trained whole
    assert not [k for k in adapter if ".visual." in k and ".merger." not in k]  # the frozen tower: nothing saved
    lora = [k for k in adapter if ".lora_" in k]
    assert lora and all(".language_model." in k for k in lora)
    assert {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in lora} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert json.loads((trained / "processor_config.json").read_text())["processor_class"] == "Qwen2VLProcessor"


def _reference(engine, messages) -> tuple[list[int], list[float]]:
    """transformers' generate on the inputs the processor makes from the rendered prompt (its M-RoPE positions
    come from the model's own bookkeeping, `rope_deltas`): the greedy tokens and their log-probabilities."""
    images = [image for m in messages for image in (m.images or ())]
    text = engine.renderer.prompt_text(engine.with_default_system(messages))
    inputs = engine.renderer.images.processor(text=[text], images=[pil(i) for i in images],
                                              add_special_tokens=False, return_tensors="pt")
    assert inputs["input_ids"][0].tolist() == engine.prompt(messages)[0]
    with torch.inference_mode():
        out = engine.model.generate(**inputs, max_new_tokens=GREEDY.max_new_tokens, do_sample=False,
                                    eos_token_id=sorted(engine.stop_ids), pad_token_id=0, output_logits=True,
                                    return_dict_in_generate=True)
    tokens = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    logprobs = [float(torch.log_softmax(step[0].double(), -1)[t]) for step, t in zip(out.logits, tokens, strict=True)]
    return tokens, logprobs


def test_generation_follows_m_rope_like_transformers_generate(engine):
    image = picture((220, 30, 30), 48, 24)
    first = [Message("user", "<image>What is in the picture?", images=[image])]
    ids, images = engine.prompt(first)
    assert images.positions.shape == (3, 1, len(ids))
    assert images.offset == int(images.positions.max()) + 1 - len(ids) < 0  # 18 image tokens span 12 positions
    answer = engine.generate(first, GREEDY)
    second = first + [Message("assistant", answer.text), Message("user", "And its colour?")]
    third = second + [Message("assistant", "Red."), Message("user", "<image>And this one?",
                                                             images=[picture((30, 160, 60), 24, 40)])]
    for conv in (first, second, third):  # an image in the first turn, then in the history, then one more
        ids, images = engine.prompt(conv)
        row = Row(ids, GREEDY.max_new_tokens, images=images, logprobs=[])
        engine.generate_rows([row], SCORED)
        tokens, logprobs = _reference(engine, conv)
        assert row.ids == tokens
        # greedy tokens of a tiny random model often survive wrong positions; their log-probabilities do not
        assert [p.logprob for p in row.logprobs] == pytest.approx(logprobs, abs=1e-4)
    mixed = engine.generate_batch([first, [Message("user", "hello")]], GREEDY)  # rows with different offsets
    assert mixed[0].text == answer.text
    assert mixed[1].text == engine.generate([Message("user", "hello")], GREEDY).text


def test_chat_image_flag_answers_as_the_engine(trained, engine, shapes_subset, capsys):
    from ember.cli import main

    picture_path = next((shapes_subset / "images").iterdir())
    assert main(["chat", "--model", str(trained), "--image", str(picture_path), "--prompt", "What is in the picture?",
                 "--max-new-tokens", str(GREEDY.max_new_tokens)]) == 0
    expected = engine.generate([Message("user", "<image>What is in the picture?",
                                        images=[picture_path.read_bytes()])], GREEDY).text
    assert expected.strip() and expected.strip() in capsys.readouterr().out


def test_export_merges_into_a_model_that_loads_and_answers_alike(trained, engine, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from ember.cli import main
    from ember.models.vision import load_processor

    out = tmp_path / "merged"
    assert main(["export", "--model", str(trained), "--to", str(out)]) == 0
    for name in ("processor_config.json", "tokenizer_config.json"):  # the stock class, where torchvision is
        assert json.loads((out / name).read_text(encoding="utf-8"))["processor_class"] == "Qwen2VLProcessor"
    model = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32).eval()
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    processor = load_processor(str(out), AutoTokenizer.from_pretrained(out), model_type="qwen2_vl")
    msgs = [Message("user", "<image>What is in the picture?", images=[picture((30, 160, 60), 32, 40)])]
    text = engine.renderer.prompt_text(engine.with_default_system(msgs))
    inputs = processor(text=[text], images=[pil(msgs[0].images[0])], add_special_tokens=False, return_tensors="pt")
    assert inputs["input_ids"][0].tolist() == engine.prompt(msgs)[0]  # the export's processor builds Ember's ids
    with torch.inference_mode():
        merged = model(**inputs).logits[:, -1]
        adapter = engine.model(**inputs).logits[:, -1]
    torch.testing.assert_close(merged, adapter, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(merged, model(**{**inputs, "pixel_values": -inputs["pixel_values"]}).logits[:, -1])


def test_qwen2_5_vl_reads_images_and_generates_like_transformers(tmp_path, smollm2_dir):
    from ember.inference.engine import Engine

    model_dir = build_qwen2_vl(tmp_path / "qwen25", smollm2_dir, "qwen2_5_vl")
    saved = json.loads((model_dir / "processor_config.json").read_text(encoding="utf-8"))
    assert saved["processor_class"] == "Qwen2_5_VLProcessor"
    engine = Engine.load(str(model_dir))
    assert type(engine.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    for case in CASES:
        msgs = _case_messages(case, answer=False)
        ids, images = engine.prompt(msgs)
        assert ids.count(engine.renderer.images.image_token_id) == case[-1]
        row = Row(ids, GREEDY.max_new_tokens, images=images, logprobs=[])
        engine.generate_rows([row], SCORED)
        tokens, logprobs = _reference(engine, msgs)
        assert row.ids == tokens
        assert [p.logprob for p in row.logprobs] == pytest.approx(logprobs, abs=1e-4)
