"""Batched rows: each row's answer equals generating it alone; streams join to the final text; stops and cancels."""

from __future__ import annotations

import threading

from ember.data.conversation import Message
from ember.inference.engine import GenerationOptions
from ember.inference.rows import Row, first_stop, generate_rows, held_back

PROMPTS = ["hi", "What is the capital of France? Please answer in one sentence.", "你好，今天天气怎么样？", "x"]


def conv(text: str) -> list[Message]:
    return [Message("user", text)]


def test_held_back_waits_for_possible_stop_strings_and_unfinished_characters():
    assert held_back("hello wor", ["world"]) == 3
    assert held_back("hello", ["world"]) == 0
    assert held_back("abc<|", ["<|end|>", "|x"]) == 2
    assert held_back("ab\ufffd", []) == 1
    assert first_stop("one two three", ["three", "two"]) == 4
    assert first_stop("one", ["two"]) is None


def test_batched_rows_equal_single_generation_with_their_own_limits(tiny_engine):
    limits = [5, 9, 7, 3]
    rows = [Row(tiny_engine.prompt_ids(conv(p)), limit) for p, limit in zip(PROMPTS, limits, strict=True)]
    batch = generate_rows(tiny_engine, rows, GenerationOptions())
    for prompt, limit, got in zip(PROMPTS, limits, batch, strict=True):
        alone = tiny_engine.generate(conv(prompt), GenerationOptions(max_new_tokens=limit))
        assert (got.text, got.completion_tokens, got.finish_reason) == (alone.text, limit, "length")
        assert got.prompt_tokens == alone.prompt_tokens


def test_stream_joins_to_generate_text_and_never_streams_part_of_a_stop_string(tiny_engine):
    full = tiny_engine.generate(conv(PROMPTS[1]), GenerationOptions(max_new_tokens=12)).text
    stop = full[5:14]  # spans several tokens
    options = GenerationOptions(max_new_tokens=12, stop=[stop])
    cut = tiny_engine.generate(conv(PROMPTS[1]), options)
    assert (cut.text, cut.finish_reason) == (full[: full.index(stop)], "stop")
    pieces = list(tiny_engine.stream(conv(PROMPTS[1]), options))
    assert "".join(pieces) == cut.text
    assert len(pieces) > 1


def test_cancel_stops_one_row_and_not_the_others(tiny_engine):
    seen: list[str] = []
    cancel = threading.Event()

    def on_text(piece: str) -> None:
        seen.append(piece)
        if len(seen) == 3:
            cancel.set()

    cancelled = Row(tiny_engine.prompt_ids(conv(PROMPTS[0])), 40, on_text=on_text, cancel=cancel)
    other = Row(tiny_engine.prompt_ids(conv(PROMPTS[1])), 10)
    done = generate_rows(tiny_engine, [cancelled, other], GenerationOptions())
    assert done[0].finish_reason == "cancelled"
    assert done[0].completion_tokens < 10
    assert done[1].text == tiny_engine.generate(conv(PROMPTS[1]), GenerationOptions(max_new_tokens=10)).text


def test_stream_with_beam_search_yields_the_beam_answer(tiny_engine):
    options = GenerationOptions(max_new_tokens=5, num_beams=2)
    assert list(tiny_engine.stream(conv("hi"), options)) == [tiny_engine.generate(conv("hi"), options).text]


def test_a_length_limit_inside_a_character_drops_its_bytes(tiny_llm_dir):
    """Forced to emit the first UTF-8 byte of 你 (E4) forever, the model never finishes a character: the answer is
    empty, streamed or not, instead of U+FFFD."""
    import torch

    from ember.inference.engine import Engine

    engine = Engine.load(tiny_llm_dir)
    (byte_e4,) = [i for t, i in engine.tokenizer.get_vocab().items() if t == "ä"]  # byte-level BPE's name for 0xE4
    assert engine.tokenizer.decode([byte_e4]) == "\ufffd"
    head = engine.model.lm_head
    with torch.no_grad():
        engine.model.lm_head = torch.nn.Linear(head.in_features, head.out_features, bias=True)
        engine.model.lm_head.weight.zero_()
        engine.model.lm_head.bias.zero_()
        engine.model.lm_head.bias[byte_e4] = 10.0
    options = GenerationOptions(max_new_tokens=2)
    done = engine.generate(conv(PROMPTS[0]), options)
    assert (done.text, done.finish_reason, done.completion_tokens) == ("", "length", 2)
    assert "".join(engine.stream(conv(PROMPTS[0]), options)) == ""
