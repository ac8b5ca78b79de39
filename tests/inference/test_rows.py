"""Batched rows: each row's answer equals generating it alone; streams join to the final text; stops and cancels."""

from __future__ import annotations

import threading

from ember.data.conversation import Message
from ember.inference.completion import GenerationOptions, Row, first_stop, held_back

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
    batch = tiny_engine.generate_rows(rows, GenerationOptions())
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
    done = tiny_engine.generate_rows([cancelled, other], GenerationOptions())
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


def test_greedy_decoding_equals_transformers_generate(tiny_engine):
    """The one decoding loop picks exactly the tokens transformers' own greedy `generate` picks."""
    import torch

    for text in PROMPTS:
        prompt = tiny_engine.prompt_ids(conv(text))
        row = Row(prompt, 12)
        tiny_engine.generate_rows([row])
        with torch.inference_mode():
            out = tiny_engine.model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                             eos_token_id=sorted(tiny_engine.stop_ids), pad_token_id=2)
        reference = out[0, len(prompt):].tolist()
        assert row.ids == [t for t in reference if t not in tiny_engine.stop_ids]


def test_a_row_that_joins_a_running_batch_gets_its_alone_answer(tiny_engine):
    """Continuous batching: rows added between decoding steps (different prompt lengths, so the caches are padded
    on both sides) answer as if alone; a prompt longer than one prefill chunk is prefilled over several steps."""
    long_prompt = tiny_engine.prompt_ids(conv(" ".join(["word"] * 60)))
    decoder = tiny_engine.decoder(prefill_chunk=16)
    first = Row(tiny_engine.prompt_ids(conv(PROMPTS[1])), 20)
    second = Row(tiny_engine.prompt_ids(conv(PROMPTS[0])), 8)
    third = Row(long_prompt, 6)
    decoder.add(first, GenerationOptions())
    steps = 0
    while decoder.rows:
        if steps == 3:
            decoder.add(second, GenerationOptions())
        if steps == 5:
            decoder.add(third, GenerationOptions())
        decoder.step()
        steps += 1
        assert decoder.rows <= 3
    assert len(third.prompt) > 4 * 16  # needed several prefill chunks
    for row in (first, second, third):
        alone = Row(row.prompt, row.limit)
        tiny_engine.generate_rows([alone])
        assert (row.finish().text, row.generated) == (alone.finish().text, alone.generated)


def test_a_seeded_row_samples_the_same_beside_other_rows(tiny_engine):
    sampled = GenerationOptions(max_new_tokens=10, do_sample=True, temperature=1.0, seed=11)
    prompt = tiny_engine.prompt_ids(conv(PROMPTS[2]))
    alone = tiny_engine.generate_rows([Row(prompt, 10, options=sampled)])[0]
    again = tiny_engine.generate_rows([Row(prompt, 10, options=sampled)])[0]
    beside = tiny_engine.generate_rows([Row(prompt, 10, options=sampled),
                                        Row(tiny_engine.prompt_ids(conv("x")), 10,
                                            options=GenerationOptions(do_sample=True, temperature=0.7))])[0]
    assert alone.text == again.text == beside.text
    other_seed = tiny_engine.generate_rows([Row(prompt, 10, options=GenerationOptions(
        max_new_tokens=10, do_sample=True, seed=12))])[0]
    assert other_seed.text != alone.text
