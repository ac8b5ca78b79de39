"""A run trained with `data.system` is asked the same way everywhere: chat, the API and benchmark prompts put that
system prompt first when a conversation has none, and an explicit system message still wins."""

from __future__ import annotations

import pytest

from ember.training.prepare import prepare_data
from ember.data.conversation import Message
from ember.data.render import IGNORE_INDEX
from ember.inference.engine import Engine
from ember.training.run import train

SYSTEM = "你是 Ember 助手。"


@pytest.fixture
def trained(tiny_run_config):
    cfg = tiny_run_config(f"data.system={SYSTEM}", "train.max_steps=1")
    samples = prepare_data(cfg, progress=False).data.train
    result = train(cfg)
    return result.output_dir, samples


def test_serving_gives_the_training_system_prompt(trained):
    from openai import OpenAI

    from ember.serving.api import create_app
    from ember.serving.background import serve_in_thread

    run, samples = trained
    engine = Engine.load(str(run))
    assert engine.default_system == SYSTEM
    first = samples[0]  # "List 1 colours." → "red", rendered with SYSTEM by the data path
    prompt = engine.prompt_ids([{"role": "user", "content": "List 1 colours."}])
    answer_start = next(i for i, label in enumerate(first.labels) if label != IGNORE_INDEX)
    assert first.input_ids[:answer_start] == prompt
    assert engine.tokenizer.decode(prompt).count(SYSTEM) == 1

    own = engine.prompt_ids([Message("system", "Be brief."), Message("user", "List 1 colours.")])
    assert SYSTEM not in engine.tokenizer.decode(own) and "Be brief." in engine.tokenizer.decode(own)

    with serve_in_thread(create_app(engine, "tiny")) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
        reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "List 1 colours."}],
                                               max_tokens=2, temperature=0)
    assert reply.usage.prompt_tokens == len(prompt)


def test_chat_shows_and_benchmarks_use_the_training_system_prompt(trained, capsys):
    import io

    from ember.evaluation.benchmarks import BENCHMARKS, Question, Subject
    from ember.evaluation.prompts import build_prompt
    from ember.inference.chat import ChatSession, print_prompt, run_chat
    from ember.inference.engine import GenerationOptions

    run, _ = trained
    engine = Engine.load(str(run))
    out = io.StringIO()
    session = ChatSession(engine, GenerationOptions(max_new_tokens=2))
    run_chat(session, iter([]), out=out, interactive=True)
    assert f"(system prompt from training: {SYSTEM!r})" in out.getvalue()
    print_prompt(session, "hi", out)
    assert SYSTEM in out.getvalue()

    spec = BENCHMARKS["cmmlu"]
    subject = Subject("x", ("other",), "测试")
    question = Question("1+1=?", ("1", "2", "3", "4"), answer=1)
    chat = build_prompt(spec, subject, question, 0, "chat", engine.renderer, system=SYSTEM)
    assert chat.text.index(SYSTEM) < chat.text.index("以下是关于测试的单项选择题")
    # byte for byte what `ember chat` sends for the same conversation
    messages = [{"role": "user", "content": "以下是关于测试的单项选择题，请直接给出正确答案的选项。\n\n1+1=?\nA. 1\nB. 2\nC. 3\nD. 4"}]
    assert engine.tokenizer.decode(engine.prompt_ids(messages)) == chat.text
    plain = build_prompt(spec, subject, question, 0, "plain", engine.renderer, system=SYSTEM)
    assert SYSTEM not in plain.text
