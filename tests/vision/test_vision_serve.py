"""A trained image-text run answers through `ember chat --image`, `ember serve` (OpenAI image_url parts) and its
merged export exactly as transformers does with the model's own processor inputs."""

from __future__ import annotations

import base64

import pytest
import torch

from ember.data.conversation import Message
from ember.inference.completion import GenerationOptions
from tests.vision.conftest import draw

GREEDY = GenerationOptions(max_new_tokens=6)
pytestmark = pytest.mark.slow  # one 4-step training run, then generation through every entry point


@pytest.fixture(scope="module")
def engine(trained_llava):
    from ember.inference.engine import Engine

    return Engine.load(str(trained_llava))


def _reference(engine, messages) -> list[int]:
    """transformers' own `generate` on the prompt ids and the processor's pixel values: the tokens it picks."""
    ids, images = engine.prompt(messages)
    with torch.inference_mode():
        out = engine.model.generate(input_ids=torch.tensor([ids]), **images.tensors, max_new_tokens=GREEDY.max_new_tokens,
                                    do_sample=False, eos_token_id=sorted(engine.stop_ids), pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_engine_prefills_images_like_the_models_forward(engine):
    msgs = [Message("user", "<image>Colour?", images=[draw("blue")])]
    ids, images = engine.prompt(msgs)
    assert ids.count(engine.renderer.images.image_token_id) == 16
    assert images.tensors["pixel_values"].shape == (1, 3, 32, 32)
    decoder = engine.decoder()
    from ember.inference.completion import Row

    row = Row(ids, 1, images=images)
    decoder.add(row, GREEDY)
    seq = decoder.prefilling[0]
    logits = decoder._prefill_chunk(seq, len(ids))  # the whole prompt in one piece
    with torch.inference_mode():
        direct = engine.model(input_ids=torch.tensor([ids]), **images.tensors).logits[:, -1]
    torch.testing.assert_close(logits, direct, rtol=1e-5, atol=1e-5)
    other = engine.prompt([Message("user", "<image>Colour?", images=[draw("red")])])[1]
    with torch.inference_mode():
        red = engine.model(input_ids=torch.tensor([ids]), **other.tensors).logits[:, -1]
    assert not torch.allclose(direct, red)  # the image reaches the logits


def test_generate_and_stream_equal_transformers_generate(engine):
    from ember.inference.completion import Row

    for colour in ("red", "green"):
        msgs = [Message("user", "<image>Colour?", images=[draw(colour)])]
        ids, images = engine.prompt(msgs)
        row = Row(ids, GREEDY.max_new_tokens, images=images)
        engine.generate_rows([row], GREEDY)
        reference = _reference(engine, msgs)
        assert row.ids == reference  # token for token, the stop token included when one came
        done = engine.generate(msgs, GREEDY)
        assert "".join(engine.stream(msgs, GREEDY)) == done.text
        assert done.completion_tokens == len(reference)
    batch = engine.generate_batch([[Message("user", "<image>Colour?", images=[draw("red")])],
                                   [Message("user", "hello")]], GREEDY)
    assert batch[0].text == engine.generate([Message("user", "<image>Colour?", images=[draw("red")])], GREEDY).text
    assert batch[1].text == engine.generate([Message("user", "hello")], GREEDY).text


def test_chat_image_flag(trained_llava, engine, tmp_path, capsys, monkeypatch):
    from ember.cli import main

    (tmp_path / "red.png").write_bytes(draw("red"))
    monkeypatch.chdir(tmp_path)
    assert main(["chat", "--model", str(trained_llava), "--image", "red.png", "--prompt", "Colour?", "--show-prompt",
                 "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "<|im_start|>user\n<image>Colour?<|im_end|>" in out
    assert "Describe images." in out  # the run's system prompt, as in training
    prompt_tokens = int(out.split("----- prompt (")[1].split(" tokens")[0])
    msgs = [Message("user", "<image>Colour?", images=[draw("red")])]
    assert prompt_tokens == len(engine.prompt_ids(msgs))


def test_serve_reads_image_url_parts(engine):
    from fastapi.testclient import TestClient

    from ember.serving.api import create_app

    url = "data:image/png;base64," + base64.b64encode(draw("green")).decode()
    with TestClient(create_app(engine, "llava")) as client:
        body = {"model": "llava", "max_tokens": 6, "temperature": 0, "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": "Colour?"}]}]}
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        expected = engine.generate([Message("user", "<image>Colour?", images=[draw("green")])], GREEDY)
        assert r.json()["choices"][0]["message"]["content"] == expected.text
        assert r.json()["usage"]["prompt_tokens"] == expected.prompt_tokens
        body["messages"][0]["content"][0]["image_url"]["url"] = "https://example.com/cat.png"
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 400 and "data:image" in r.json()["error"]["message"]


def test_export_merges_into_a_standalone_model(trained_llava, engine, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ember.export.merge import export

    out = export(str(trained_llava), str(tmp_path / "merged"))
    model = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(out)
    msgs = [Message("system", "Describe images."), Message("user", "<image>Colour?", images=[draw("yellow")])]
    text = engine.renderer.prompt_text(msgs)
    from ember.data.images import open_image

    inputs = processor(text=[text], images=[open_image(draw("yellow"))], add_special_tokens=False,
                       return_tensors="pt")
    ids, images = engine.prompt(msgs)
    assert inputs["input_ids"][0].tolist() == ids  # the export's own processor builds the prompt Ember builds
    with torch.inference_mode():
        merged = model(**inputs).logits[:, -1]
        adapter = engine.model(input_ids=torch.tensor([ids]), **images.tensors).logits[:, -1]
    torch.testing.assert_close(merged, adapter, rtol=1e-4, atol=1e-4)
    with pytest.raises(Exception, match="mmproj"):
        export(str(trained_llava), str(tmp_path / "m.gguf"), fmt="gguf")


def test_chat_session_keeps_the_image_with_its_message(engine, tmp_path):
    import io

    from ember.inference.chat import ChatSession, run_chat

    (tmp_path / "blue.png").write_bytes(draw("blue"))
    session = ChatSession(engine, GREEDY)
    out = io.StringIO()
    run_chat(session, iter([f"/image {tmp_path / 'blue.png'}\n", "Colour?\n", "And again?\n"]), out, interactive=False)
    assert "(image attached to your next message: 1 waiting)" in out.getvalue()
    first, _, second, _ = session.history
    assert first.content == "<image>Colour?" and first.images == [draw("blue")]
    assert second.images is None and session.pending_images == []
    ids = engine.prompt_ids(session.messages("third"))  # the image stays in the history's prompt
    assert ids.count(engine.renderer.images.image_token_id) == 16
