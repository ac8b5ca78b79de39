"""Preference data (dpo / orpo / simpo / kto) through the one renderer: every common file layout, prompt ids equal to
the generation prompt and identical in both rows, labels exactly the answer and its end-of-turn token, the
truncation rule (prompt first, answers never cut), identical and empty pairs reported, preview and export."""

from __future__ import annotations

import io
import json

import pytest

from ember.config.schema import DataConfig, DatasetSpec
from ember.data.conversation import Message
from ember.data.preference_encode import KTO, PAIRS
from ember.data.recipes import EncodeContext
from ember.data.report import DataReport
from ember.errors import ConfigError, DataError

SYSTEM = "You answer briefly."
Q, A, B = "What is the capital of France?", "Paris.", "Lyon, I think."


def chat_ids(tok, messages: list[dict], generation: bool = False) -> list[int]:
    return tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation)["input_ids"]


def encode(renderer, record: dict, recipe=PAIRS, **data) -> tuple:
    cfg = DataConfig(**data)
    report = DataReport()
    fmt = recipe.detect(record, "t.jsonl:1")
    converted = recipe.convert(fmt, record, "t.jsonl:1", DatasetSpec(path="t.jsonl"), cfg)
    ctx = EncodeContext(renderer.tokenizer, renderer, cfg)
    if recipe is PAIRS:
        return recipe.encode_one(converted, ctx, report), report
    return list(recipe.encode([converted], ctx, report)), report


SHAPES = {
    "llamafactory": {"conversations": [{"from": "system", "value": SYSTEM}, {"from": "human", "value": Q}],
                     "chosen": {"from": "gpt", "value": A}, "rejected": {"from": "gpt", "value": B}},
    "medicalgpt": {"conversations": [{"from": "system", "value": SYSTEM}, {"from": "human", "value": Q}],
                   "chosen": A, "rejected": B},
    "trl": {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": Q}],
            "chosen": [{"role": "assistant", "content": A}], "rejected": [{"role": "assistant", "content": B}]},
    "trl_full_conversations": {
        "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": Q}],
        "chosen": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": Q},
                   {"role": "assistant", "content": A}],
        "rejected": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": Q},
                     {"role": "assistant", "content": B}]},
    "trl_implicit_prompt": {
        "chosen": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": Q},
                   {"role": "assistant", "content": A}],
        "rejected": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": Q},
                     {"role": "assistant", "content": B}]},
    "alpaca": {"system": SYSTEM, "instruction": Q, "chosen": A, "rejected": B},
}


def test_every_layout_gives_the_same_pair_with_chat_template_ids(renderer, smol_tokenizer):
    prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": Q}]
    prompt_ids = chat_ids(smol_tokenizer, prompt, generation=True)
    chosen_ids = chat_ids(smol_tokenizer, prompt + [{"role": "assistant", "content": A}])
    rejected_ids = chat_ids(smol_tokenizer, prompt + [{"role": "assistant", "content": B}])
    end = smol_tokenizer.convert_tokens_to_ids("<|im_end|>")
    for name, record in SHAPES.items():
        pair, report = encode(renderer, record)
        assert pair is not None, name
        assert pair.prompt_length == len(prompt_ids), name
        assert pair.chosen.input_ids == chosen_ids and pair.rejected.input_ids == rejected_ids, name
        for enc, ids in ((pair.chosen, chosen_ids), (pair.rejected, rejected_ids)):
            assert enc.input_ids[:pair.prompt_length] == prompt_ids
            # trained: exactly the answer and its <|im_end|>; not the prompt, not the "\n" the template adds after
            stop = ids.index(end, len(prompt_ids))
            expected = [-100] * len(prompt_ids) + ids[len(prompt_ids):stop + 1] + [-100] * (len(ids) - stop - 1)
            assert enc.labels == expected, name
        assert report.answer_tokens == pair.trained_tokens


def test_multi_turn_prompt_keeps_history_untrained_and_prompt_ids_equal_generation_ids(renderer, smol_tokenizer):
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
               {"role": "user", "content": Q}]
    record = {"prompt": history, "chosen": A, "rejected": B}
    pair, _ = encode(renderer, record)
    prompt_ids = chat_ids(smol_tokenizer, history, generation=True)
    assert pair.chosen.input_ids[:pair.prompt_length] == pair.rejected.input_ids[:pair.prompt_length] == prompt_ids
    assert renderer.prompt_ids([Message(m["role"], m["content"]) for m in history]) == prompt_ids  # what chat sends
    assert set(pair.chosen.labels[:pair.prompt_length]) == {-100}  # the history's assistant turn does not train
    answer = smol_tokenizer(A, add_special_tokens=False)["input_ids"]
    trained = [t for t in pair.chosen.labels if t != -100]
    assert trained == answer + [smol_tokenizer.convert_tokens_to_ids("<|im_end|>")]


def rounds_record(n: int, question: str = Q) -> dict:
    prompt = [{"role": "system", "content": SYSTEM}]
    for k in range(n - 1):
        prompt += [{"role": "user", "content": f"Earlier question number {k}, quite a long one to take room."},
                   {"role": "assistant", "content": f"Earlier answer number {k}, also long enough to matter here."}]
    prompt.append({"role": "user", "content": question})
    return {"prompt": prompt, "chosen": A, "rejected": B}


def test_truncation_drops_the_oldest_rounds_then_cuts_the_last_question_from_the_left(renderer, smol_tokenizer):
    record = rounds_record(3)
    full, _ = encode(renderer, record)
    last_round = [record["prompt"][0], record["prompt"][-1]]
    alone = chat_ids(smol_tokenizer, last_round + [{"role": "assistant", "content": B}])
    # Room for the last round only: both earlier rounds go, the answers stay whole (with their <|im_end|>).
    pair, report = encode(renderer, record, max_length=len(alone))
    assert len(full.rejected.input_ids) > len(alone)
    assert pair.rejected.input_ids == alone
    assert pair.chosen.input_ids == chat_ids(smol_tokenizer, last_round + [{"role": "assistant", "content": A}])
    assert pair.prompt_length == len(chat_ids(smol_tokenizer, last_round, generation=True))
    assert pair.chosen.turns_dropped == 2 and pair.chosen.truncated
    assert pair.trained_tokens == full.trained_tokens and not report.answer_tokens_lost
    # Three tokens less: the last question loses its first characters, as few as fit, both rows alike.
    long_question = "Please tell me, after thinking about it for a while: " + Q
    record = rounds_record(1, long_question)
    whole, _ = encode(renderer, record)
    limit = len(whole.rejected.input_ids) - 3
    pair, _ = encode(renderer, record, max_length=limit)
    assert max(len(pair.chosen.input_ids), len(pair.rejected.input_ids)) <= limit
    kept = smol_tokenizer.decode(pair.chosen.input_ids[:pair.prompt_length])
    cut = next(k for k in range(len(long_question)) if long_question[k:] + "<|im_end|>" in kept)
    assert long_question[cut:] in kept and cut > 0
    one_more = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": long_question[cut - 1:]},
                {"role": "assistant", "content": B}]
    assert len(chat_ids(smol_tokenizer, one_more)) > limit  # the cut is the smallest that fits
    assert pair.chosen.input_ids[:pair.prompt_length] == pair.rejected.input_ids[:pair.prompt_length]
    assert pair.trained_tokens == whole.trained_tokens


def test_a_pair_whose_answer_alone_is_too_long_is_dropped_and_counted(renderer):
    record = {"prompt": Q, "chosen": "A long answer. " * 40, "rejected": B}
    pair, report = encode(renderer, record, max_length=64)
    assert pair is None and report.dropped_too_long == 1
    assert report.answer_tokens_lost == {"sample dropped: longer than max_length": report.answer_tokens}
    fits = rounds_record(3)
    full, _ = encode(renderer, fits)
    pair, report = encode(renderer, fits, max_length=len(full.rejected.input_ids) - 1, truncation="drop")
    assert pair is None and report.dropped_too_long == 1  # drop: nothing is cut


def test_identical_and_empty_answers_are_dropped_and_reported(write, make_config, prepare):
    path = write("pairs.jsonl", [{"prompt": Q, "chosen": A, "rejected": B},
                                 {"prompt": Q, "chosen": A, "rejected": A},
                                 {"prompt": Q, "chosen": "  ", "rejected": B},
                                 {"prompt": Q, "chosen": A, "rejected": ""}])
    prepared = prepare(make_config([{"path": str(path)}], stage="dpo"))
    report = prepared.data.report
    assert len(prepared.data.train) == 1 and report.read == 4
    assert (report.dropped_identical_pairs, report.dropped_empty_answers) == (1, 2)
    assert report.kept_records == 1 and report.unaccounted == 0
    reasons = [r["reason"] for r in report.skipped_records]
    assert reasons == ["the chosen and rejected answers are identical", "empty chosen answer", "empty rejected answer"]
    rows = dict(report.summary_rows())
    assert rows["dropped: identical answers"] == "1" and rows["dropped: empty answer"] == "2"


def test_kto_examples(renderer, smol_tokenizer):
    messages = [{"role": "user", "content": Q}, {"role": "assistant", "content": B}]
    rows, report = encode(renderer, {"messages": messages, "label": False}, recipe=KTO)
    (row,) = rows
    assert row["label"] is False and row["input_ids"] == chat_ids(smol_tokenizer, messages)
    assert row["input_ids"][:row["prompt_length"]] == chat_ids(smol_tokenizer, messages[:1], generation=True)
    with pytest.raises(DataError, match="expected true or false"):
        encode(renderer, {"messages": messages, "label": "no"}, recipe=KTO)
    with pytest.raises(DataError, match="use stage: kto"):
        encode(renderer, {"messages": messages, "label": True})
    with pytest.raises(DataError, match="use stage: dpo"):
        encode(renderer, SHAPES["medicalgpt"], recipe=KTO)


def test_bad_records_name_the_field(renderer):
    with pytest.raises(DataError, match="must end with a user"):
        encode(renderer, {"prompt": [{"role": "user", "content": Q}, {"role": "assistant", "content": A}],
                          "chosen": A, "rejected": B})
    with pytest.raises(DataError, match="field 'rejected': missing required field"):
        PAIRS.convert("pairs", {"prompt": Q, "chosen": A}, "t:1", DatasetSpec(path="t"), DataConfig())
    for record, state in (({"chosen": A, "rejected": B}, "missing"), ({"prompt": "", "chosen": A, "rejected": B}, "empty")):
        with pytest.raises(DataError) as failed:
            PAIRS.convert("pairs", record, "t:1", DatasetSpec(path="t"), DataConfig())
        assert str(failed.value) == (f"t:1: field 'prompt': {state}: without a prompt, chosen and rejected must be "
                                     "full conversations (message lists) that share the prompt")


def test_stage_and_format_rules(make_config):
    with pytest.raises(ConfigError, match="preference data"):
        make_config([{"path": "x.jsonl", "format": "pairs"}], stage="sft")
    with pytest.raises(ConfigError, match="stage kto reads"):
        make_config([{"path": "x.jsonl", "format": "pairs"}], stage="kto")
    with pytest.raises(ConfigError, match="cut the prompt first"):
        make_config([{"path": "x.jsonl"}], stage="dpo", truncation="right")
    from ember.config import EmberConfig, from_dict, validate

    raw = {"stage": "orpo", "data": {"datasets": [{"path": "x.jsonl"}]}, "preference": {"precompute_ref": True}}
    with pytest.raises(ConfigError, match="stage orpo uses no reference model"):
        validate(from_dict(EmberConfig, raw, "test"))
    raw = {"stage": "dpo", "data": {"datasets": [{"path": "x.jsonl"}]}, "preference": {"loss_type": "ipo",
                                                                                      "label_smoothing": 0.1}}
    with pytest.raises(ConfigError, match="label_smoothing applies to dpo \\(loss_type sigmoid\\) and simpo"):
        validate(from_dict(EmberConfig, raw, "test"))
    raw = {"stage": "kto", "data": {"datasets": [{"path": "x.jsonl"}]}, "train": {"group_by_length": True}}
    with pytest.raises(ConfigError, match="train.group_by_length groups single sequences"):
        validate(from_dict(EmberConfig, raw, "test"))


def test_export_and_preview(write, make_config, prepare, tmp_path, smol_tokenizer):
    from ember.data.preview import export_jsonl, print_preview

    pairs = write("pairs.jsonl", [{"prompt": Q, "chosen": A, "rejected": B}])
    prepared = prepare(make_config([{"path": str(pairs)}], stage="dpo"))
    assert export_jsonl(prepared.data, tmp_path / "pairs.out.jsonl") == 1
    (row,) = [json.loads(x) for x in (tmp_path / "pairs.out.jsonl").read_text().splitlines()]
    assert list(row) == ["source", "chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels",
                         "split"]
    sample = prepared.data.train[0]
    assert (row["chosen_input_ids"], row["rejected_labels"]) == (sample.chosen.input_ids, sample.rejected.labels)
    out = io.StringIO()
    print_preview(prepared.data, smol_tokenizer, n=1, stream=out, color=False)
    text = out.getvalue()
    assert f"prompt:\n<|im_start|>system\n{SMOL_SYSTEM}<|im_end|>\n<|im_start|>user\n{Q}" in text
    assert f"chosen:\n[[{A}<|im_end|>]]" in text and f"rejected:\n[[{B}<|im_end|>]]" in text

    kto = write("kto.jsonl", [{"messages": [{"role": "user", "content": Q}, {"role": "assistant", "content": A}],
                               "label": True}])
    prepared = prepare(make_config([{"path": str(kto)}], stage="kto"))
    export_jsonl(prepared.data, tmp_path / "kto.out.jsonl")
    (row,) = [json.loads(x) for x in (tmp_path / "kto.out.jsonl").read_text().splitlines()]
    assert list(row) == ["source", "input_ids", "labels", "label", "split"] and row["label"] is True


SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

SHARED = {  # file, stage, records in it
    "llamafactory/dpo_zh_demo.json": ("dpo", 300),
    "llamafactory/dpo_en_demo.json": ("dpo", 300),
    "medicalgpt/dpo_zh_500.jsonl": ("dpo", 500),
    "firefly/dummy_dpo.jsonl": ("dpo", 16),
    "llamafactory/kto_en_demo.json": ("kto", 300),
}


@pytest.mark.parametrize("name", sorted(SHARED))
def test_real_preference_files(name, shared_data, make_config, prepare, renderer, smol_tokenizer):
    from ember.data.pipeline import load_records

    stage, records = SHARED[name]
    cfg = make_config([{"path": str(shared_data / "dpo" / name), "samples": 12}], stage=stage, max_length=4096)
    prepared = prepare(cfg)
    report = prepared.data.report
    assert report.read == records and not report.skipped
    samples = list(prepared.data.train)
    assert len(samples) + report.dropped_too_long + report.dropped_identical_pairs + report.dropped_empty_answers == 12
    assert report.kept_records == len(samples) and samples
    # Record by record: the rows' first ids are the generation prompt of that record's prompt
    recipe = KTO if stage == "kto" else PAIRS
    ctx = EncodeContext(smol_tokenizer, renderer, cfg.data)
    for record in load_records(cfg.data, recipe, DataReport()).train:
        if stage == "kto":
            rows = list(recipe.encode([record], ctx, DataReport()))
            encs = [(r["input_ids"], r["labels"], r["prompt_length"]) for r in rows]
        else:
            pair = recipe.encode_one(record, ctx, DataReport())
            encs = [] if pair is None else [(e.input_ids, e.labels, pair.prompt_length)
                                            for e in (pair.chosen, pair.rejected)]
        if not encs:
            continue
        prompt = renderer.prompt_ids(record.prompt, tools=record.tools)
        messages = [{"role": m.role, "content": m.content} for m in record.prompt]
        assert prompt == chat_ids(smol_tokenizer, messages, generation=True)
        for ids, labels, length in encs:
            assert length == len(prompt) and ids[:length] == prompt
            assert set(labels[:length]) == {-100} and labels.count(-100) < len(labels)
            assert smol_end(renderer) in [t for t in labels if t != -100]  # the answer ends with <|im_end|>


def smol_end(renderer) -> int:
    return renderer.tokenizer.convert_tokens_to_ids("<|im_end|>")
