"""Image + text data: readers attach each image to its message, the renderer's ids equal the model's own processor
applied to the rendered chat, labels never cover image tokens, and serving's prompt ids equal training's."""

from __future__ import annotations

import base64
import json

import pytest

from ember.data.conversation import Message
from ember.data.render import IGNORE_INDEX
from ember.errors import DataError
from tests.vision.conftest import draw


@pytest.fixture
def prepared(vision_config):
    from ember.training.prepare import prepare_data

    return prepare_data(vision_config())


def test_both_record_shapes_read_their_images(vision_config, prepared, image_data):
    from ember.data.pipeline import load_records
    from ember.data.report import DataReport

    records = load_records(vision_config().data, prepared.stage.recipe, DataReport()).train
    assert len(records) == 8
    for conv in records:
        user = conv.messages[1]
        assert [m.role for m in conv.messages] == ["system", "user", "assistant"]
        assert user.content.count("<image>") == 1 and user.images is not None and len(user.images) == 1
        assert conv.messages[0].images is None and conv.messages[2].images is None
    assert records[0].messages[1].content == "<image>What colour is it?"
    assert records[0].messages[1].images == [(image_data / "img" / "red.png").read_bytes()]
    assert records[4].messages[1].content == "<image>Name the colour."
    assert records[4].messages[1].images == records[0].messages[1].images


def test_ids_equal_the_processor_on_the_rendered_chat(prepared, llava_processor):
    sample = prepared.data.train[0]
    conv = [Message("system", "Describe images."), Message("user", "<image>What colour is it?", images=[draw("red")]),
            Message("assistant", "It is red.")]
    text = prepared.renderer.render_text(conv)
    import io

    from PIL import Image

    reference = llava_processor(text=[text], images=[Image.open(io.BytesIO(draw("red"))).convert("RGB")],
                                add_special_tokens=False)["input_ids"][0]
    assert sample.input_ids == list(reference)
    image_id = llava_processor.image_token_id
    assert sample.input_ids.count(image_id) == 16  # (32 / 8)^2 patches; CLIP's class token is dropped
    trained = [t for t, label in zip(sample.input_ids, sample.labels, strict=True) if label != IGNORE_INDEX]
    assert prepared.tokenizer.decode(trained) == "It is red.<|im_end|>"
    assert sample.images == [draw("red")]


def test_labels_never_cover_image_tokens_even_with_mask_all(vision_config):
    from ember.training.prepare import prepare_data

    prepared = prepare_data(vision_config("data.mask=all"))
    image_id = prepared.processor.image_token_id
    for sample in prepared.data.train:
        for token, label in zip(sample.input_ids, sample.labels, strict=True):
            assert label == (IGNORE_INDEX if token == image_id else token)


def test_serving_prompt_ids_are_the_training_ids_before_the_answer(prepared):
    sample = prepared.data.train[4]
    msgs = [Message("system", "Describe images."), Message("user", "<image>Name the colour.", images=[draw("red")])]
    prompt = prepared.renderer.prompt_ids(msgs)
    first = next(i for i, label in enumerate(sample.labels) if label != IGNORE_INDEX)
    assert prompt == sample.input_ids[:first]


def test_marker_text_without_images_stays_text(prepared):
    ids = prepared.renderer.prompt_ids([Message("user", "what is <image>?")])
    assert prepared.processor.image_token_id not in ids
    assert "<image>" in prepared.tokenizer.decode(ids)


def test_data_url_and_alpaca_shapes(tmp_path):
    from ember.data.vision_formats import convert_with_images

    png = draw("blue")
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    conv = convert_with_images("openai", {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Two: "}, {"type": "image_url", "image_url": {"url": url}},
                                     {"type": "image", "image": url}]},
        {"role": "assistant", "content": "ok"}]}, "mem:1", {})
    assert conv.messages[0].content == "Two: <image><image>" and conv.messages[0].images == [png, png]
    conv = convert_with_images("alpaca", {"instruction": "<image>Colour?", "output": "blue", "images": [url]}, "m:1", {})
    assert conv.messages[0].images == [png]


@pytest.mark.parametrize("record, problem", [
    ({"conversations": [{"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "red"}], "images": ["a.png"]},
     "1 image(s) but 0 '<image>' marker(s)"),
    ({"conversations": [{"from": "human", "value": "<image>?"}, {"from": "gpt", "value": "red"}],
      "images": ["missing.png"]}, "image file not found"),
    ({"conversations": [{"from": "human", "value": "<image>?"}, {"from": "gpt", "value": "red"}],
      "images": ["http://example.com/a.png"]}, "image URLs are not fetched"),
    ({"conversations": [{"from": "human", "value": "<image>?"}, {"from": "gpt", "value": "red"}],
      "images": ["broken.png"]}, "not a readable image"),
    ({"conversations": [{"from": "human", "value": "?"}, {"from": "gpt", "value": "<image>"}], "images": ["a.png"]},
     "a assistant message holds images"),
])
def test_bad_image_records_name_the_line_and_the_fix(tmp_path, record, problem):
    from ember.data.vision_formats import convert_with_images

    (tmp_path / "a.png").write_bytes(draw("red"))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        convert_with_images("sharegpt", record, f"{data}:1", {})
    assert problem in str(err.value) and f"{data}:1" in str(err.value)


def test_processed_images_are_cached_by_content(vision_config, tmp_path):
    from ember.training.prepare import prepare_data

    cfg = vision_config("data.cache=true", f"data.cache_dir={tmp_path / 'cache'}")
    first = prepare_data(cfg)
    again = prepare_data(cfg)
    assert not first.from_cache and again.from_cache
    assert [s.input_ids for s in again.data.train] == [s.input_ids for s in first.data.train]
    assert [s.images for s in again.data.train] == [s.images for s in first.data.train]


def test_a_text_model_refuses_images(tiny_run_config):
    from ember.training.prepare import prepare_data

    prepared = prepare_data(tiny_run_config())
    with pytest.raises(Exception, match="reads none"):
        prepared.renderer.prompt_ids([Message("user", "<image>?", images=[draw("red")])])


def test_packing_is_refused_for_image_batches(vision_config):
    from ember.errors import ConfigError
    from ember.training.prepare import prepare_data

    with pytest.raises(ConfigError, match="data.packing"):
        prepare_data(vision_config("data.packing=true"))


def test_vision_options_on_a_text_model_fail_before_it_loads(tiny_run_config):
    from ember.errors import ConfigError
    from ember.training.prepare import prepare_data

    with pytest.raises(ConfigError, match="text-only model"):
        prepare_data(tiny_run_config("method.train_projector=true"))
