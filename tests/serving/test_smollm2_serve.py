"""The real SmolLM2 with a LoRA adapter from a tiny `ember train` run, served and called with the openai client."""

from __future__ import annotations

import threading

import pytest

from ember.inference.engine import GenerationOptions

QUESTIONS = ["What is the capital of France?", "Name three primary colors."]


@pytest.mark.smollm2
def test_openai_client_against_the_tuned_smollm2(smollm2_engine):
    from openai import OpenAI

    from ember.serving.api import create_app
    from ember.serving.background import serve_in_thread

    engine = smollm2_engine
    assert engine.loaded.model.peft_config  # the adapter is on
    want = {q: engine.generate([{"role": "user", "content": q}], GenerationOptions(max_new_tokens=16)).text
            for q in QUESTIONS}
    assert "Paris" in want[QUESTIONS[0]]
    app = create_app(engine, "smol-tuned", api_key="sk-smol")
    with serve_in_thread(app) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="sk-smol", max_retries=0, timeout=120)
        ask = lambda q, **kw: client.chat.completions.create(  # noqa: E731
            model="smol-tuned", messages=[{"role": "user", "content": q}], max_tokens=16, temperature=0, **kw)
        assert ask(QUESTIONS[0]).choices[0].message.content == want[QUESTIONS[0]]
        streamed = "".join(c.choices[0].delta.content or "" for c in ask(QUESTIONS[0], stream=True) if c.choices)
        assert streamed == want[QUESTIONS[0]]

        got: dict[str, str] = {}
        threads = [threading.Thread(target=lambda q=q: got.__setitem__(q, ask(q).choices[0].message.content))
                   for q in QUESTIONS]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert got == want
