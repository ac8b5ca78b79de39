"""Turn-aware truncation (and left/right/drop) to `max_length`, with the counts the report shows."""

from __future__ import annotations

import pytest

from ember.data.conversation import Conversation, Message
from ember.data.render import IGNORE_INDEX
from ember.data.truncation import fit

SYSTEM = Message("system", "Be brief.")
R1 = [Message("user", "What is one plus one?"), Message("assistant", "Two.")]
R2 = [Message("user", "And two plus two?"), Message("assistant", "Four.")]
LONG_QUESTION = " ".join(f"word{i}" for i in range(40)) + " So, what is three plus three?"
R3 = [Message("user", LONG_QUESTION), Message("assistant", "Six, of course.")]


def conv(*messages: Message) -> Conversation:
    return Conversation(list(messages), "chat.jsonl:1")


def trained_text(enc, tokenizer) -> list[str]:
    runs, current = [], []
    for token, label in zip(enc.input_ids, enc.labels, strict=True):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs + ([tokenizer.decode(current)] if current else [])


def test_fits_untouched(renderer):
    full = renderer.encode(conv(SYSTEM, *R1, *R2, *R3))
    assert fit(renderer, conv(SYSTEM, *R1, *R2, *R3), full, "turns", len(full.input_ids), "all_assistant") is full
    assert not full.truncated


def test_turns_drops_the_oldest_round_first(renderer, smol_tokenizer):
    full = renderer.encode(conv(SYSTEM, *R1, *R2, *R3))
    want = renderer.encode(conv(SYSTEM, *R2, *R3))
    for max_length in (len(want.input_ids), len(full.input_ids) - 1):
        out = fit(renderer, conv(SYSTEM, *R1, *R2, *R3), full, "turns", max_length, "all_assistant")
        assert (out.input_ids, out.labels) == (want.input_ids, want.labels)
        assert (out.turns_dropped, out.truncated) == (1, True)
    assert smol_tokenizer.decode(out.input_ids).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nAnd two")
    assert trained_text(out, smol_tokenizer) == ["Four.<|im_end|>", "Six, of course.<|im_end|>"]


def test_turns_then_cuts_the_last_question_from_the_left(renderer, smol_tokenizer):
    full = renderer.encode(conv(SYSTEM, *R1, *R2, *R3))
    only_last = renderer.encode(conv(SYSTEM, *R3))
    max_length = len(only_last.input_ids) - 10
    out = fit(renderer, conv(SYSTEM, *R1, *R2, *R3), full, "turns", max_length, "all_assistant")
    assert (out.turns_dropped, out.truncated) == (2, True)
    text = smol_tokenizer.decode(out.input_ids)
    head, _, rest = text.partition("<|im_start|>user\n")
    assert head == "<|im_start|>system\nBe brief.<|im_end|>\n"  # the system prompt stays
    kept_question = rest.partition("<|im_end|>")[0]
    assert LONG_QUESTION.endswith(kept_question) and len(kept_question) < len(LONG_QUESTION)
    assert kept_question.endswith("So, what is three plus three?")  # cut from the left: the question itself stays

    # exactly the sample of the shortened conversation, as long as fits (one more character would not)
    def shortened(keep: int):
        return renderer.encode(conv(SYSTEM, Message("user", LONG_QUESTION[-keep:]), R3[1]))

    want = shortened(len(kept_question))
    assert (out.input_ids, out.labels) == (want.input_ids, want.labels)
    assert len(out.input_ids) <= max_length < len(shortened(len(kept_question) + 1).input_ids)
    # the final answer is whole and keeps its trained <|im_end|>
    assert trained_text(out, smol_tokenizer) == ["Six, of course.<|im_end|>"]
    assert out.labels[-2:] == [2, IGNORE_INDEX]


def test_turns_drops_a_sample_whose_answer_alone_does_not_fit(renderer):
    sample = conv(SYSTEM, *R1, *R3)
    answer_only = renderer.encode(conv(SYSTEM, Message("user", ""), R3[1]))
    full = renderer.encode(sample)
    assert fit(renderer, sample, full, "turns", len(answer_only.input_ids) - 1, "all_assistant") is None
    assert fit(renderer, sample, full, "turns", len(answer_only.input_ids), "all_assistant") is not None


@pytest.mark.parametrize("mode", ["left", "right", "drop"])
def test_token_level_modes(renderer, mode):
    sample = conv(SYSTEM, *R1, *R2)
    full = renderer.encode(sample)
    n = len(full.input_ids) - 7
    out = fit(renderer, sample, full, mode, n, "all_assistant")
    if mode == "drop":
        assert out is None
        return
    part = slice(7, None) if mode == "left" else slice(0, n)
    assert (out.input_ids, out.labels) == (full.input_ids[part], full.labels[part])
    assert (out.truncated, out.turns_dropped) == (True, 0)


def test_report_counts(write, make_config, prepare):
    def record(*rounds: tuple[str, str]) -> dict:
        messages = [{"role": "system", "content": "Be brief."}]
        for question, answer in rounds:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return {"messages": messages}

    path = write("t.jsonl", [
        record(("Hi", "Hello.")),                                           # fits
        record((LONG_QUESTION, "Sure."), ("Short?", "Yes.")),               # one round dropped
        record(("One?", "1."), ("Two?", "2."), (LONG_QUESTION, "Six.")),    # two rounds dropped, question cut
        record(("Q?", " ".join(["very long answer"] * 30))),                # the answer alone is too long
    ])
    prepared = prepare(make_config([{"path": str(path)}], max_length=48, truncation="turns"))
    report = prepared.data.report
    assert [s.source for s in prepared.data.train] == [f"{path}:1", f"{path}:2", f"{path}:3"]
    assert [s.turns_dropped for s in prepared.data.train] == [0, 1, 2]
    assert all(len(s.input_ids) <= 48 for s in prepared.data.train)
    assert (report.read, report.kept, report.truncated, report.turns_dropped, report.dropped_too_long) == (4, 3, 2, 3, 1)
    assert report.skipped_records == [{"source": f"{path}:4", "reason": "longer than max_length=48"}]
    assert ("turns dropped by truncation", "3") in report.summary_rows()
