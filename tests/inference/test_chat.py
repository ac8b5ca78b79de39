"""`ember chat`: prompt ids equal the training renderer's, history cutting, piped multi-turn sessions, --prompt."""

from __future__ import annotations

import io
import sys

import pytest

from ember.data.conversation import Conversation, Message
from ember.data.render import IGNORE_INDEX
from ember.inference.chat import ChatSession
from ember.inference.engine import GenerationOptions

GREEDY = GenerationOptions(max_new_tokens=6)


def test_chat_prompt_ids_are_the_training_ids_before_the_last_answer(tiny_engine):
    history = [Message("user", "What is 2+2?"), Message("assistant", "4.")]
    session = ChatSession(tiny_engine, GREEDY, system="Answer briefly.", history=list(history))
    prompt = tiny_engine.prompt_ids(session.messages("And 3+3? 你好"))

    conv = Conversation([Message("system", "Answer briefly."), *history, Message("user", "And 3+3? 你好"),
                         Message("assistant", "6.")])
    encoded = tiny_engine.renderer.encode(conv)  # what training sees (every assistant turn trained)
    assert encoded.input_ids[: len(prompt)] == prompt
    assert encoded.labels[len(prompt) - 1] == IGNORE_INDEX  # the prompt ends with the assistant header ...
    assert encoded.labels[len(prompt)] == encoded.input_ids[len(prompt)]  # ... and the answer starts right after
    assert tiny_engine.tokenizer.decode(encoded.input_ids[len(prompt):]) == "6.<|im_end|>\n"


def test_history_cutting_drops_the_oldest_whole_turns(tiny_engine):
    turns = [("first question", "first answer"), ("second question", "second answer"), ("third q", "third a")]
    history = [Message(role, text) for q, a in turns for role, text in (("user", q), ("assistant", a))]
    system, new = [Message("system", "S")], [Message("user", "new question")]
    size = lambda msgs: len(tiny_engine.prompt_ids(msgs))  # noqa: E731

    def kept(budget: int) -> list[Message]:
        session = ChatSession(tiny_engine, GREEDY, system="S", history_max_tokens=budget, history=history)
        return session.messages("new question")

    assert kept(size(system + history + new)) == system + history + new
    assert kept(size(system + history + new) - 1) == system + history[2:] + new  # one whole turn dropped
    assert kept(size(system + history[4:] + new)) == system + history[4:] + new
    assert kept(size(system + history[4:] + new) - 1) == system + new  # nothing fits but the new message
    assert kept(1) == system + new  # the new message is never cut


def run_cli(monkeypatch, capsys, argv: list[str], stdin: str = "") -> str:
    from ember.cli import main

    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    assert main(argv) == 0
    return capsys.readouterr().out


def expected_prompt_block(engine, messages) -> str:
    ids = engine.prompt_ids(messages)
    text = engine.renderer.prompt_text(messages)
    return f"----- prompt ({len(ids)} tokens) -----\n{text}\n----- end of prompt -----\n"


def test_piped_stdin_is_a_multi_turn_session_and_clear_resets_it(monkeypatch, capsys, tiny_llm_dir, tiny_engine):
    out = run_cli(monkeypatch, capsys, ["chat", "--model", tiny_llm_dir, "--max-new-tokens", "6", "--show-prompt"],
                  stdin="hello there\nand then?\n/clear\nhello there\n/exit\nnever read\n")

    u1 = [Message("user", "hello there")]
    a1 = tiny_engine.generate(u1, GREEDY).text
    u2 = u1 + [Message("assistant", a1.strip()), Message("user", "and then?")]
    a2 = tiny_engine.generate(u2, GREEDY).text
    expected = (expected_prompt_block(tiny_engine, u1) + a1 + "\n"
                + expected_prompt_block(tiny_engine, u2) + a2 + "\n"
                + "(history cleared)\n"
                + expected_prompt_block(tiny_engine, u1) + a1 + "\n")
    assert out == expected


def test_system_command_sets_the_system_prompt(monkeypatch, capsys, tiny_llm_dir, tiny_engine):
    out = run_cli(monkeypatch, capsys, ["chat", "--model", tiny_llm_dir, "--max-new-tokens", "3", "--show-prompt"],
                  stdin="/system Be terse.\nhi\n")
    msgs = [Message("system", "Be terse."), Message("user", "hi")]
    assert out == ("(system prompt set: 'Be terse.')\n" + expected_prompt_block(tiny_engine, msgs)
                   + tiny_engine.generate(msgs, GenerationOptions(max_new_tokens=3)).text + "\n")


def test_prompt_answers_once(monkeypatch, capsys, tiny_llm_dir, tiny_engine):
    out = run_cli(monkeypatch, capsys, ["chat", "--model", tiny_llm_dir, "--prompt", "Why is the sky blue?",
                                        "--max-new-tokens", "8"])
    answer = tiny_engine.generate([Message("user", "Why is the sky blue?")], GenerationOptions(max_new_tokens=8))
    assert answer.completion_tokens == 8
    assert out == answer.text + "\n"


@pytest.mark.parametrize("text", ["", "   "])
def test_blank_lines_are_skipped(monkeypatch, capsys, tiny_llm_dir, text):
    assert run_cli(monkeypatch, capsys, ["chat", "--model", tiny_llm_dir], stdin=f"{text}\n/exit\n") == ""


@pytest.mark.parametrize("flags, message", [
    (["--num-beams", "0"], "--num-beams 0 is out of range: use a value of at least 1"),
    (["--temperature", "-1", "--do-sample"], "--temperature -1.0 is out of range: use a value of at least 0 and at most 2"),
    (["--temperature", "nan", "--do-sample"], "--temperature nan is out of range: use a value of at least 0 and at most 2"),
    (["--temperature", "0.005", "--do-sample"], "--temperature 0.005 is too small to sample with: use 0 for greedy "
                                                "decoding or a value from 0.01 to 2"),
    (["--temperature", "0", "--do-sample"], "--temperature 0 means greedy decoding, which --do-sample contradicts: "
                                            "sample at a temperature from 0.01 to 2, or leave out --do-sample"),
    (["--top-p", "2"], "--top-p 2.0 is out of range: use a value above 0 and at most 1"),
    (["--top-p", "0"], "--top-p 0.0 is out of range: use a value above 0 and at most 1"),
    (["--max-new-tokens", "0"], "--max-new-tokens 0 is out of range: use a value of at least 1 and at most 2147483647"),
    (["--max-new-tokens", "-1"], "--max-new-tokens -1 is out of range: use a value of at least 1 and at most 2147483647"),
    (["--repetition-penalty", "0"], "--repetition-penalty 0.0 is out of range: use a value above 0"),
])
def test_generation_flags_serve_would_refuse_are_refused_before_loading(monkeypatch, capsys, flags, message):
    def never(*args, **kwargs):
        raise AssertionError("the model loaded before the flags were checked")

    monkeypatch.setattr("ember.inference.engine.Engine.load", never)
    from ember.cli import main

    assert main(["chat", "--model", "unused", "--prompt", "hi", *flags]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_the_edges_of_the_generation_ranges_are_accepted(monkeypatch, capsys, tiny_llm_dir):
    for flags in (["--temperature", "2", "--top-p", "1", "--do-sample", "--seed", "0"],
                  ["--temperature", "0.01", "--do-sample", "--seed", "0"],
                  ["--temperature", "0"], ["--num-beams", "1", "--repetition-penalty", "1.5"]):
        run_cli(monkeypatch, capsys, ["chat", "--model", tiny_llm_dir, "--prompt", "hi", "--max-new-tokens", "1",
                                      *flags])  # asserts exit code 0
