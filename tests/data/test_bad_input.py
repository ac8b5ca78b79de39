"""Malformed input: strict stops at the first bad record naming file:line and field; skip keeps the good ones."""

from __future__ import annotations

import json

import pytest

from ember.errors import ConfigError, DataError


def _chat(user: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


GOOD = [_chat("one", "1"), _chat("two", "2"), _chat("three", "3")]


def _lines(*records) -> bytes:
    """JSON lines; a bytes item is written verbatim (a broken line)."""
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


def _error(prepare, cfg) -> str:
    with pytest.raises(DataError) as info:
        prepare(cfg)
    return str(info.value)


def _kept_sources(prepared) -> list[str]:
    return [s.source for s in prepared.data.train]


def test_non_utf8_bytes(write, make_config, prepare):
    path = write("latin1.jsonl", _lines(GOOD[0], '{"messages": [{"role": "user", "content": "caf\xe9"}]}'.encode("latin-1"),
                                        GOOD[2]))
    assert _error(prepare, make_config([{"path": str(path)}])) == (
        f"{path}:2: not valid UTF-8 (byte 0xe9 at column 47): re-save the file as UTF-8"
    )
    report = prepare(make_config([{"path": str(path)}], on_error="skip")).data.report
    assert report.skipped_records == [
        {"source": f"{path}:2", "reason": "not valid UTF-8 (byte 0xe9 at column 47): re-save the file as UTF-8"}
    ]


def test_non_utf8_json_array_and_csv_stop_whatever_on_error(write, make_config, prepare):
    array = write("bad.json", b'[\n{"instruction": "a", "output": "b"},\n{"instruction": "\xff", "output": "c"}\n]')
    csv_file = write("bad.csv", b"input,target\nok,fine\n\xfe,x\n")
    for path, where in ((array, "3: not valid UTF-8 (byte 0xff at column 18)"),
                        (csv_file, "3: not valid UTF-8 (byte 0xfe at column 1)")):
        for on_error in ("strict", "skip"):
            assert _error(prepare, make_config([{"path": str(path)}], on_error=on_error)).startswith(f"{path}:{where}")


def test_truncated_json_array(write, make_config, prepare):
    text = json.dumps(GOOD, indent=1)
    # cut inside the last record: nothing after it can be read, so even on_error=skip stops
    path = write("cut.json", text[:-40])
    assert _error(prepare, make_config([{"path": str(path)}], on_error="skip")) == (
        f"{path}:33: invalid JSON: Unterminated string starting at (column 13)"
    )
    # cut just before the closing bracket: every record parses, the array never ends
    path = write("open.json", text[:-1])
    assert _error(prepare, make_config([{"path": str(path)}])) == (
        f"{path}:38: invalid JSON: the file ends before the closing ']' (truncated?)"
    )


def test_truncated_jsonl(write, make_config, prepare):
    path = write("cut.jsonl", _lines(GOOD[0], GOOD[1]) + json.dumps(GOOD[2]).encode()[:25])
    assert _error(prepare, make_config([{"path": str(path)}])) == (
        f"{path}:3: invalid JSON: Unterminated string starting at (column 24)"
    )
    prepared = prepare(make_config([{"path": str(path)}], on_error="skip"))
    assert _kept_sources(prepared) == [f"{path}:1", f"{path}:2"]
    assert prepared.data.report.skipped_records == [
        {"source": f"{path}:3", "reason": "invalid JSON: Unterminated string starting at (column 24)"}
    ]


@pytest.mark.parametrize(
    ("messages", "field", "problem"),
    [
        ([("user", "a"), ("user", "b"), ("assistant", "c")], "messages[1].role", "two user messages in a row"),
        ([("assistant", "a"), ("user", "b")], "messages[0].role", "the conversation starts with an assistant message"),
        ([("user", "a"), ("assistant", "b"), ("assistant", "c")], "messages[2].role", "two assistant messages in a row"),
        ([("user", "a"), ("system", "s"), ("assistant", "c")], "messages[1].role", "a system message may only come first"),
        ([("user", "a"), ("tool", "t"), ("assistant", "c")], "messages[1].role", "a tool result must follow an assistant"),
    ],
)
def test_wrong_role_order(write, make_config, prepare, messages, field, problem):
    record = {"messages": [{"role": r, "content": c} for r, c in messages]}
    path = write("order.jsonl", [GOOD[0], record])
    assert _error(prepare, make_config([{"path": str(path)}])).startswith(
        f"{path}:2: field '{field}': wrong role order: {problem}"
    )


def test_sharegpt_starting_with_gpt(write, make_config, prepare):
    path = write("s.jsonl", [{"conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "yo"}]}])
    assert _error(prepare, make_config([{"path": str(path)}])).startswith(
        f"{path}:1: field 'messages[0].role': wrong role order: the conversation starts with an assistant message"
    )


def test_empty_assistant_text(write, make_config, prepare):
    path = write("empty.jsonl", [GOOD[0], _chat("q", "   ")])
    assert _error(prepare, make_config([{"path": str(path)}])) == (
        f"{path}:2: field 'messages[1].content': empty assistant text"
    )


@pytest.mark.parametrize(("typo", "suggestion"), [("contnet", "content"), ("wieght", "weight"), ("rol", "role")])
def test_unknown_message_field_suggests_the_closest_name(write, make_config, prepare, typo, suggestion):
    message = {"role": "user", "content": "hi", typo: 1}
    path = write("typo.jsonl", [{"messages": [message, {"role": "assistant", "content": "yo"}]}])
    assert _error(prepare, make_config([{"path": str(path)}])) == (
        f"{path}:1: field 'messages[0].{typo}': unknown field; did you mean '{suggestion}'?"
    )


def test_missing_field_hints_at_a_misspelling(write, make_config, prepare):
    path = write("a.jsonl", [{"instruction": "q", "input": "", "outptu": "a"}])
    assert _error(prepare, make_config([{"path": str(path)}])) == (
        f"{path}:1: cannot detect the format from fields ['input', 'instruction', 'outptu']: expected messages (openai), "
        "conversations (sharegpt), conversation (firefly), chat text (glaive), instruction+output (alpaca), "
        "input+target / query+response (columns) or text; set format: in the dataset entry"
    )
    assert _error(prepare, make_config([{"path": str(path), "format": "alpaca"}])) == (
        f"{path}:1: field 'output': missing required field (found 'outptu': misspelt?)"
    )


def test_missing_mapped_columns(write, make_config, prepare):
    path = write("c.csv", [{"question": "q1", "reply": "a1"}])
    columns = {"prompt": "question", "response": "answer"}
    assert _error(prepare, make_config([{"path": str(path), "format": "columns", "columns": columns}])) == (
        f"{path}:2: field 'answer': missing required field; the record has ['question', 'reply']"
    )
    assert _error(prepare, make_config([{"path": str(path), "format": "columns"}])) == (
        f"{path}:2: this record has no prompt/response column pair (its fields: ['question', 'reply']); "
        "set columns: {prompt: NAME, response: NAME} in the dataset entry"
    )


def test_a_message_without_content_is_a_missing_field(write, make_config, prepare):
    record = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}
    path = write("no_content.jsonl", _lines(GOOD[0], record))
    assert _error(prepare, make_config([{"path": str(path)}])) == (
        f"{path}:2: field 'messages[1].content': missing: every message needs its text")


def test_csv_row_with_extra_cells(write, make_config, prepare):
    path = write("extra.csv", "input,target\nq,a\nq,a,surplus\n")
    assert _error(prepare, make_config([{"path": str(path)}])) == f"{path}:3: more cells than the 2 header columns"


@pytest.mark.parametrize("mask", ["all_assistant", "last_assistant"])
def test_zero_trainable_tokens(write, make_config, prepare, mask):
    record = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "train": False}]}
    path = write("nothing.jsonl", [record, record])
    assert _error(prepare, make_config([{"path": str(path)}], mask=mask)) == (
        f"{path}: the dataset has zero trainable tokens after processing (2 records read; 0 skipped as invalid; "
        f"0 dropped as longer than max_length=1024; 2 with nothing to train (mask: {mask})). Check mask, max_length, "
        "truncation and the skip report"
    )


def test_zero_trainable_tokens_after_skipping_everything(write, make_config, prepare):
    path = write("all_bad.jsonl", _lines(b"{", b"[1, 2]"))
    assert _error(prepare, make_config([{"path": str(path)}], on_error="skip")) == (
        f"{path}: the dataset has zero trainable tokens after processing (2 records read; 2 skipped as invalid; "
        "0 dropped as longer than max_length=1024; 0 with nothing to train (mask: all_assistant)). Check mask, "
        "max_length, truncation and the skip report"
    )


def test_strict_stops_at_the_first_bad_record(write, make_config, prepare):
    path = write("two_bad.jsonl", _lines(GOOD[0], b'{"messages": 3}', GOOD[1], b"not json"))
    assert _error(prepare, make_config([{"path": str(path)}])) == (
        f"{path}:2: field 'messages': expected list, got int"
    )


def test_skip_keeps_good_records_and_reports_each_skipped_one(write, make_config, prepare):
    path = write("mixed.jsonl", _lines(
        GOOD[0],
        b'{"messages": 3}',
        GOOD[1],
        b"not json",
        _chat("q", ""),
        b"[1]",
        {"messages": [{"role": "user", "content": "q", "contnet": "x"}]},
        GOOD[2],
    ))
    prepared = prepare(make_config([{"path": str(path)}], on_error="skip"))
    report = prepared.data.report
    assert _kept_sources(prepared) == [f"{path}:1", f"{path}:3", f"{path}:8"]
    assert (report.read, report.kept) == (8, 3)
    assert report.skipped_records == [
        {"source": f"{path}:2", "reason": "expected list, got int"},
        {"source": f"{path}:4", "reason": "invalid JSON: Expecting value (column 1)"},
        {"source": f"{path}:5", "reason": "empty assistant text"},
        {"source": f"{path}:6", "reason": "expected a JSON object per line, got list"},
        {"source": f"{path}:7", "reason": "unknown field; did you mean 'content'?"},
    ]
    # the summary groups skips by reason
    assert report.skipped == {"expected list, got int": 1, "invalid JSON": 1, "empty assistant text": 1,
                              "expected a JSON object per line, got list": 1, "unknown field": 1}


# -- input that used to end in a traceback: each is now one line naming file:line (issue 14) ------------------------
def test_a_lone_surrogate_is_that_records_error(write, make_config, prepare):
    bad = '{"messages": [{"role": "user", "content": "a\\ud800b"}, {"role": "assistant", "content": "x"}]}'
    paired = '{"messages": [{"role": "user", "content": "\\ud83d\\ude00"}, {"role": "assistant", "content": "x"}]}'
    lines = write("surrogate.jsonl", f"{bad}\n{paired}\n")
    array = write("surrogate.json", f"[\n{paired},\n{bad}\n]\n")
    problem = ("field 'messages[0].content': not valid Unicode: a lone surrogate \\ud800 at character 2 (half of a "
               "UTF-16 pair); fix the text or the program that wrote it")
    for path, line, good in ((lines, 1, 2), (array, 3, 2)):
        assert _error(prepare, make_config([{"path": str(path)}])) == f"{path}:{line}: {problem}"
        prepared = prepare(make_config([{"path": str(path)}], on_error="skip"))
        assert _kept_sources(prepared) == [f"{path}:{good}"]  # a surrogate pair is one character: kept
        assert prepared.data.report.skipped == {"not valid Unicode": 1}


def test_json_nested_too_deeply_is_skippable_in_lines_and_arrays(write, make_config, prepare):
    deep = "[" * 200_000 + "]" * 200_000
    lines = write("deep.jsonl", _lines(GOOD[0], deep.encode(), GOOD[1]))
    array = write("deep.json", "[" + json.dumps(GOOD[0]) + ",\n" + deep + ",\n" + json.dumps(GOOD[1]) + "\n]\n")
    for path in (lines, array):
        assert _error(prepare, make_config([{"path": str(path)}])) == f"{path}:2: invalid JSON: nested too deeply"
        prepared = prepare(make_config([{"path": str(path)}], on_error="skip"))
        assert _kept_sources(prepared) == [f"{path}:1", f"{path}:3"]  # the array reads on past it


def test_a_number_python_refuses_is_invalid_json(write, make_config, prepare):
    path = write("digits.json", "[" + json.dumps(GOOD[0]) + ',\n{"weight": ' + "9" * 5000 + "},\n"
                 + json.dumps(GOOD[1]) + "\n]\n")
    assert _error(prepare, make_config([{"path": str(path)}])) == (
        f"{path}:2: invalid JSON: Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits"
    )
    assert _kept_sources(prepare(make_config([{"path": str(path)}], on_error="skip"))) == [f"{path}:1", f"{path}:3"]


def _parquet_bytes(records) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(("damage", "where", "problem"), [
    (lambda b: b"PAR1 not really", "", "not a readable Parquet file (Parquet magic bytes not found in footer. Either "
     "the file is corrupted or this is not a parquet file.)"),
    (lambda b: b[:-30], "", "not a readable Parquet file (Parquet magic bytes not found in footer. Either the file is "
     "corrupted or this is not a parquet file.)"),
    (lambda b: b[:20] + b"\0" * 40 + b[60:], ":row 1", "the Parquet file cannot be read from this row on (Couldn't "
     "deserialize thrift: TProtocolException: Invalid data)"),
])
def test_a_corrupt_parquet_file_is_one_line(write, make_config, prepare, damage, where, problem):
    path = write("broken.parquet", damage(_parquet_bytes(GOOD)))
    for on_error in ("strict", "skip"):  # nothing after the damage can be read: skip stops too
        assert _error(prepare, make_config([{"path": str(path)}], on_error=on_error)) == (
            f"{path}{where}: {problem}: check that it was copied whole, or write it again"
        )


def test_nulls_in_parquet_mean_absent(write, make_config, prepare):
    # Arrow gives every message every field: `weight` on one message is null on all the others.
    weighted = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "half", "weight": 0.5}]}
    path = write("weights.parquet", _parquet_bytes([weighted, GOOD[0]]))
    prepared = prepare(make_config([{"path": str(path)}]))
    first, second = prepared.data.train
    assert (first.source, second.source) == (f"{path}:row 1", f"{path}:row 2")
    assert sorted({w for w in first.weights if w}) == [0.5] and second.weights is None
    # moss turns are numbered fields: a record with fewer turns has the later ones null
    moss = [{"meta_instruction": "", "chat": {"turn_1": {"Human": "<|Human|>: a<eoh>", "MOSS": "<|MOSS|>: b<eom>"},
                                              "turn_2": {"Human": "<|Human|>: c<eoh>", "MOSS": "<|MOSS|>: d<eom>"}}},
            {"meta_instruction": "", "chat": {"turn_1": {"Human": "<|Human|>: e<eoh>", "MOSS": "<|MOSS|>: f<eom>"}}}]
    assert len(prepare(make_config([{"path": str(write("moss.parquet", _parquet_bytes(moss)))}])).data.train) == 2


def test_null_weight_and_train_in_json_mean_absent(write, make_config, prepare):
    record = {"messages": [{"role": "user", "content": "q", "weight": None, "train": None},
                           {"role": "assistant", "content": "a", "weight": None, "train": None, "loss": False}]}
    path = write("nulls.jsonl", [record, GOOD[0]])
    prepared = prepare(make_config([{"path": str(path)}], on_error="skip"))
    # the answer's `train: null` gives way to its `loss: false`: nothing to train in record 1
    assert _kept_sources(prepared) == [f"{path}:2"]
    assert prepared.data.report.dropped_nothing_to_train == 1


def test_a_csv_cell_longer_than_the_csv_modules_default_limit(write, make_config, prepare):
    answer = "word " * 40_000  # 200 kB; Python's csv stops at 128 kB unless told otherwise
    path = write("long.csv", [{"input": "q", "target": answer}])
    assert len(prepare(make_config([{"path": str(path)}], max_length=64)).data.train) == 1


def test_a_short_csv_row_leaves_its_missing_cells_absent(write, make_config, prepare):
    path = write("short.csv", "input,target,system\nq,a\nq\n")
    assert [s.source for s in prepare(make_config([{"path": str(path)}], on_error="skip")).data.train] == [f"{path}:2"]
    assert _error(prepare, make_config([{"path": str(path)}])) == (  # the row that lacks its answer cell
        f"{path}:3: this record has no prompt/response column pair (its fields: ['input']); set columns: "
        "{prompt: NAME, response: NAME} in the dataset entry")


def _picky_template(tmp_path):
    template = tmp_path / "picky.jinja"
    template.write_text(
        "{%- for m in messages %}{% if 'FORBIDDEN' in m['content'] %}"
        "{{ raise_exception('the word FORBIDDEN is not allowed') }}{% endif %}"
        "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}", encoding="utf-8")
    return template


def test_a_template_error_caused_by_one_record_is_that_records_error(write, make_config, prepare, tmp_path):
    template = _picky_template(tmp_path)
    path = write("picky.jsonl", [GOOD[0], _chat("say FORBIDDEN", "no"), GOOD[1]])
    config = lambda on_error: make_config([{"path": str(path)}], template=str(template), on_error=on_error)  # noqa: E731
    assert _error(prepare, config("strict")) == (
        f"{path}:2: chat template 'picky' failed to render: the word FORBIDDEN is not allowed"
    )
    prepared = prepare(config("skip"))
    assert _kept_sources(prepared) == [f"{path}:1", f"{path}:3"]
    assert prepared.data.report.skipped_records == [
        {"source": f"{path}:2", "reason": "chat template 'picky' failed to render: the word FORBIDDEN is not allowed"}
    ]
    assert prepared.data.report.skipped == {"chat template 'picky' failed to render": 1}


@pytest.mark.parametrize("on_error", ["strict", "skip"])
def test_a_template_file_with_a_syntax_error_stops_before_any_record(write, make_config, prepare, tmp_path, on_error):
    template = tmp_path / "broken.jinja"
    template.write_text("{% for m in messages %}\n{{ m.content }\n{% endfor %}", encoding="utf-8")
    path = write("good.jsonl", GOOD)
    with pytest.raises(ConfigError) as info:
        prepare(make_config([{"path": str(path)}], template=str(template), on_error=on_error))
    assert str(info.value) == (f"{template}:2: chat template syntax error: unexpected '}}'; fix the template (or use "
                               "a shipped one: `ember templates`)")


@pytest.mark.parametrize(("stage", "records"), [
    ("dpo", [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "FORBIDDEN?", "chosen": "a", "rejected": "b"},
             {"prompt": "q", "chosen": "c", "rejected": "d"}]),
    ("kto", [{**_chat("q", "a"), "label": True}, {**_chat("q", "FORBIDDEN"), "label": False},
             {**_chat("q", "b"), "label": False}]),
])
def test_a_template_error_is_that_records_error_in_preference_stages(write, make_config, prepare, tmp_path, stage,
                                                                     records):
    path = write("picky.jsonl", records)
    config = lambda on_error: make_config([{"path": str(path)}], stage=stage, template=str(_picky_template(tmp_path)),  # noqa: E731
                                          on_error=on_error)
    assert _error(prepare, config("strict")) == (
        f"{path}:2: chat template 'picky' failed to render: the word FORBIDDEN is not allowed"
    )
    report = prepare(config("skip")).data.report
    assert [r["source"] for r in report.skipped_records] == [f"{path}:2"]
    assert (report.read, report.kept_records, sum(report.skipped.values())) == (3, 2, 1)
