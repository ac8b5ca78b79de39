"""Fields that change the answer and are implemented: logit_bias, response_format (JSON), logprobs, echo,
presence/frequency penalties. Each is checked against what the model itself computes."""

from __future__ import annotations

import json

import pytest
import torch

from ember.inference.completion import GenerationOptions
from ember.inference.sampling import Sampler

from .conftest import MODEL

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def model_logprobs(engine, ids: list[int], start: int) -> torch.Tensor:
    """log-softmax of the model's logits predicting ids[start:] (one full forward, no cache)."""
    with torch.inference_mode():
        logits = engine.model(input_ids=torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits[start - 1: len(ids) - 1], dim=-1)


def test_logit_bias_forces_and_bans_tokens(client, api):
    tok = api.engine.tokenizer
    (forced,) = tok(" Paris", add_special_tokens=False)["input_ids"]
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=3, temperature=0,
                                       logit_bias={str(forced): 100})
    assert r.choices[0].message.content == tok.decode([forced] * 3)

    prompt = api.engine.prompt_ids(QUESTION)
    top2 = torch.topk(model_logprobs(api.engine, prompt + [0], len(prompt))[0], 2).indices.tolist()
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=1, temperature=0,
                                       logit_bias={str(top2[0]): -100})
    assert r.choices[0].message.content == tok.decode([top2[1]])  # the best token banned: the runner-up


def test_chat_logprobs_are_the_models_own_and_stream_alike(client, api):
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, temperature=0, logprobs=True,
                                       top_logprobs=3)
    entries = r.choices[0].logprobs.content
    tok = api.engine.tokenizer
    prompt = api.engine.prompt_ids(QUESTION)
    ids = tok(r.choices[0].message.content, add_special_tokens=False)["input_ids"]
    assert [e.token for e in entries] == [tok.decode([i]) for i in ids] and len(entries) == 4
    reference = model_logprobs(api.engine, prompt + ids, len(prompt))
    for entry, token, row in zip(entries, ids, reference, strict=True):
        assert entry.logprob == pytest.approx(float(row[token]), abs=1e-4)
        best = torch.topk(row, 3)
        assert [t.token for t in entry.top_logprobs] == [tok.decode([i]) for i in best.indices.tolist()]
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(best.values.tolist(), abs=1e-4)
        assert entry.top_logprobs[0].token == entry.token  # greedy: the chosen token is the most likely one
        assert bytes(entry.bytes) == entry.token.encode()

    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, temperature=0,
                                                 logprobs=True, top_logprobs=3, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in entries]
    plain = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2, top_logprobs=3)
    assert plain.choices[0].logprobs is None  # top_logprobs counts only with logprobs: true


def test_completions_echo_and_legacy_logprobs(client, api):
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=3, temperature=0, echo=True,
                                  logprobs=2)
    alone = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=3, temperature=0)
    choice = r.choices[0]
    assert choice.text == "Once upon a time" + alone.choices[0].text
    lp = choice.logprobs
    assert "".join(lp.tokens) == alone.choices[0].text and len(lp.top_logprobs) == 3
    assert lp.text_offset == [16, 16 + len(lp.tokens[0]), 16 + len(lp.tokens[0]) + len(lp.tokens[1])]
    assert all(max(top.values()) == pytest.approx(value) for top, value in zip(lp.top_logprobs, lp.token_logprobs,
                                                                              strict=True))
    streamed = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=3, temperature=0,
                                         echo=True, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == choice.text


def test_response_format_json(client, api):
    free = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=20, temperature=0)
    with pytest.raises(json.JSONDecodeError):
        json.loads(free.choices[0].message.content)  # the random model does not write JSON by itself
    hi = [{"role": "user", "content": "hi"}]
    r = client.chat.completions.create(model=MODEL, messages=hi, max_tokens=20, temperature=0,
                                       response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    schema = {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"],
              "additionalProperties": False}
    for seed in range(3):
        r = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=20, temperature=1.0, seed=seed,
                                           n=2, response_format={"type": "json_schema",
                                                                 "json_schema": {"name": "flag", "schema": schema}})
        for choice in r.choices:
            assert choice.finish_reason == "stop"
            assert set(json.loads(choice.message.content)) == {"a"}


def test_sampler_penalties_and_bias_follow_openai_and_transformers():
    """presence/frequency penalties subtract per generated token (OpenAI); repetition divides positive and
    multiplies negative logits of every seen token (transformers); the bias is added last."""

    class Tok:
        def decode(self, ids):
            return str(ids)

    logits = torch.tensor([2.0, -1.0, 0.5, 3.0])
    options = GenerationOptions(presence_penalty=0.5, frequency_penalty=0.25, repetition_penalty=2.0,
                                logit_bias={2: 1.5})
    sampler = Sampler(options, prompt=[1], tokenizer=Tok())
    sampler.accept(3)
    sampler.accept(3)
    sampler.accept(0)
    scores = sampler._penalised(logits)
    # token 0: 2/2 - (0.25*1 + 0.5); token 1 (prompt): -1*2; token 2: 0.5 + 1.5; token 3: 3/2 - (0.25*2 + 0.5)
    assert scores.tolist() == pytest.approx([0.25, -2.0, 2.0, 0.5])
    assert sampler.choose(logits)[0] == 2


def test_top_k_and_top_p_keep_what_transformers_keeps():
    class Tok:
        def decode(self, ids):
            return str(ids)

    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    seen = set()
    for seed in range(200):
        sampler = Sampler(GenerationOptions(do_sample=True, top_p=0.7, top_k=50), [0], Tok(), seed=seed)
        seen.add(sampler.choose(logits)[0])
    assert seen == {0, 1}  # 0.5 + 0.3 ≥ 0.7: the two most likely tokens stay
    seen = {Sampler(GenerationOptions(do_sample=True, top_k=3), [0], Tok(), seed=s).choose(logits)[0]
            for s in range(200)}
    assert seen == {0, 1, 2}
