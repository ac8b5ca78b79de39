"""A corpus of malformed and awkward input, one kind per case, across every reader and format (tests/data/test_fuzz.py).

Each case is a small file (or folder) whose bad record sits between good ones, with what Ember must do with it:
`keep` (awkward but valid), `skip` (that record's DataError, naming `where`), `drop` (valid, counted as dropped:
too long, nothing to train, no text, identical or empty answers) or `fatal` (the file cannot be read past a point:
a DataError naming the file, and the line or row when there is one, whatever on_error says).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any, Optional

GOOD = {
    "openai": {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
    "sharegpt": {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
    "alpaca": {"instruction": "Hi", "input": "", "output": "Hello."},
    "firefly": {"conversation": [{"human": "Hi", "assistant": "Hello."}]},
    "moss": {"meta_instruction": "", "chat": {"turn_1": {"Human": "<|Human|>: Hi<eoh>", "MOSS": "<|MOSS|>: Hello.<eom>"}}},
    "columns": {"query": "Hi", "response": "Hello."},
    "glaive": {"system": "SYSTEM: You are helpful.", "chat": "USER: Hi\n\n\nASSISTANT: Hello. <|endoftext|>"},
    "text": {"text": "A short document."},
    "pairs": {"prompt": "Hi", "chosen": "Hello.", "rejected": "Go away."},
    "kto": {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}], "label": True},
}
STAGE = {"text": "pt", "pairs": "dpo", "kto": "kto"}  # every other format trains with sft
LONG = "word " * 400  # far over the max_length the fuzz configs use (FUZZ_DATA)
BIG = "x" * 1_100_000  # over the max_record_bytes they use
FUZZ_DATA = {"max_length": 128, "max_record_bytes": 1 << 20, "truncation": "drop", "shuffle": False, "cache": False}


@dataclass
class Case:
    name: str
    reader: str  # jsonl | json | csv | txt | parquet | folder | path
    fmt: str  # the format the file holds (or means to)
    files: dict[str, bytes]  # relative path → content; the dataset path is `path`
    expect: str  # keep | skip | drop | fatal
    where: Optional[str] = None  # what follows the file name in the message: ":2", ":row 2", "" (the file)
    bad: Optional[str] = None  # the file (relative) the message names; default the only / first file
    path: Optional[str] = None  # the dataset path (relative), default the only / first file
    kept: int = 2  # records that become training data
    format: str = "auto"

    @property
    def stage(self) -> str:
        return STAGE.get(self.fmt, "sft")

    @property
    def file(self) -> str:
        return self.bad or next(iter(self.files))

    @property
    def dataset(self) -> str:
        return self.path or next(iter(self.files))


def _dumps(record: Any) -> bytes:
    return json.dumps(record, ensure_ascii=True).encode()  # ensure_ascii: lone surrogates become \ud800 escapes


def _raw(value: Any) -> bytes:
    return value if isinstance(value, bytes) else _dumps(value)


def lines(name: str, fmt: str, bad: Any, expect: str, **kw) -> Case:
    """A JSON Lines file: good, bad (bytes verbatim, or a record), good."""
    good = _dumps(GOOD[fmt])
    return Case(name, "jsonl", fmt, {f"{name}.jsonl": good + b"\n" + _raw(bad) + b"\n" + good + b"\n"}, expect,
                ":2" if expect != "keep" else None, kept=3 if expect == "keep" else 2, **kw)


def array(name: str, fmt: str, bad: Any, expect: str, **kw) -> Case:
    """A JSON array file, one record per line: good, bad, good."""
    good = _dumps(GOOD[fmt])
    return Case(name, "json", fmt, {f"{name}.json": b"[" + good + b",\n" + _raw(bad) + b",\n" + good + b"]\n"}, expect,
                ":2" if expect != "keep" else None, kept=3 if expect == "keep" else 2, **kw)


def raw(name: str, suffix: str, fmt: str, content: bytes, expect: str, where: Optional[str] = None, **kw) -> Case:
    reader = suffix.lstrip(".")
    return Case(name, reader, fmt, {f"{name}{suffix}": content}, expect, where, **kw)


def parquet_bytes(records: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), buffer)
    return buffer.getvalue()


def parquet(name: str, fmt: str, bad: dict[str, Any], expect: str, **kw) -> Case:
    """A Parquet file: good, bad, good (Arrow unifies the rows' types: the bad row must fit the others' schema)."""
    content = parquet_bytes([GOOD[fmt], bad, GOOD[fmt]])
    return Case(name, "parquet", fmt, {f"{name}.parquet": content}, expect,
                ":row 2" if expect != "keep" else None, kept=3 if expect == "keep" else 2, **kw)


def _msgs(*pairs: tuple[Any, Any], **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": r, "content": c} for r, c in pairs], **extra}


def _corpus() -> list[Case]:
    deep = "[" * 200_000 + "]" * 200_000
    cases = [
        # -- JSON Lines: the line itself ------------------------------------------------------------------------------
        lines("not_json", "openai", b"not json", "skip"),
        lines("cut_object", "openai", b'{"messages": [', "skip"),
        lines("trailing_garbage", "openai", _dumps(GOOD["openai"]) + b" xyz", "skip"),
        lines("line_is_array", "openai", b"[1, 2]", "skip"),
        lines("line_is_string", "openai", b'"hello"', "skip"),
        lines("line_is_number", "openai", b"42", "skip"),
        lines("line_is_null", "openai", b"null", "skip"),
        lines("line_is_true", "openai", b"true", "skip"),
        lines("empty_object", "openai", b"{}", "skip"),
        lines("lone_surrogate", "openai", _msgs(("user", "a\ud800b"), ("assistant", "x")), "skip"),
        lines("lone_low_surrogate_key", "openai", {"messages": GOOD["openai"]["messages"], "\udc00": 1}, "skip"),
        lines("surrogate_pair", "openai", _msgs(("user", "\U0001f600"), ("assistant", "x")), "keep"),
        lines("deep_arrays", "openai", deep.encode(), "skip"),
        lines("deep_objects", "openai", ('{"a":' * 100_000 + "1" + "}" * 100_000).encode(), "skip"),
        lines("huge_integer", "openai", b'{"messages": ' + b"9" * 5000 + b"}", "skip"),
        lines("invalid_utf8", "openai", b'{"messages": "caf\xe9"}', "skip"),
        lines("over_max_record_bytes", "openai", _msgs(("user", BIG), ("assistant", "y")), "skip"),
        lines("nul_character", "openai", _msgs(("user", "a\x00b"), ("assistant", "c\x00")), "keep"),
        lines("control_characters", "openai", _msgs(("user", "\x1b[31m\x07\x0b"), ("assistant", "\x7f\x85ok")), "keep"),
        lines("special_token_text", "openai", _msgs(("user", "<|im_end|><|im_start|>system"), ("assistant", "<|endoftext|>")),
              "keep"),
        lines("bidi_and_zero_width", "openai", _msgs(("user", "\u202e\u200b\ufeff"), ("assistant", "\u2066ok\u2069")), "keep"),
        lines("duplicate_keys", "openai", b'{"messages": 3, "messages": ' + _dumps(GOOD["openai"]["messages"]) + b"}",
              "keep"),
        lines("too_long", "openai", _msgs(("user", "q"), ("assistant", LONG)), "drop"),
        lines("nothing_to_train", "openai",
              {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "train": False}]},
              "drop"),
        lines("crlf_blank_lines_bom", "openai", b"\r\n\r\n" + _dumps(GOOD["openai"]) + b"\r", "keep"),
        # -- openai: fields -------------------------------------------------------------------------------------------
        lines("weight_nan", "openai", b'{"messages": [{"role": "user", "content": "q"}, '
                                      b'{"role": "assistant", "content": "a", "weight": NaN}]}', "skip"),
        lines("weight_infinity", "openai", b'{"messages": [{"role": "user", "content": "q"}, '
                                           b'{"role": "assistant", "content": "a", "weight": Infinity}]}', "skip"),
        lines("weight_negative", "openai",
              {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": -1}]}, "skip"),
        lines("weight_string", "openai",
              {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": "1"}]},
              "skip"),
        lines("weight_bool", "openai",
              {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": True}]},
              "skip"),
        lines("weight_null", "openai",
              {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": None}]},
              "keep"),
        lines("train_string", "openai",
              {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "train": "yes"}]},
              "skip"),
        lines("role_unknown", "openai", _msgs(("user", "q"), ("bot", "a")), "skip"),
        lines("role_number", "openai", {"messages": [{"role": 3, "content": "q"}]}, "skip"),
        lines("role_missing", "openai", {"messages": [{"content": "q"}]}, "skip"),
        lines("content_number", "openai", _msgs(("user", 5), ("assistant", "a")), "skip"),
        lines("content_parts_list", "openai", _msgs(("user", [{"type": "text", "text": "q"}]), ("assistant", "a")),
              "skip"),
        lines("content_null", "openai", _msgs(("user", None), ("assistant", "a")), "skip"),
        lines("messages_string", "openai", {"messages": "hello"}, "skip"),
        lines("messages_empty", "openai", {"messages": []}, "skip"),
        lines("messages_of_strings", "openai", {"messages": ["user", "hi"]}, "skip"),
        lines("only_user", "openai", _msgs(("user", "q")), "skip"),
        lines("two_users", "openai", _msgs(("user", "a"), ("user", "b"), ("assistant", "c")), "skip"),
        lines("starts_with_assistant", "openai", _msgs(("assistant", "a"), ("user", "b")), "skip"),
        lines("system_in_middle", "openai", _msgs(("user", "a"), ("system", "s"), ("assistant", "c")), "skip"),
        lines("tool_before_assistant", "openai", _msgs(("user", "a"), ("tool", "t"), ("assistant", "c")), "skip"),
        lines("empty_answer", "openai", _msgs(("user", "a"), ("assistant", "")), "skip"),
        lines("whitespace_answer", "openai", _msgs(("user", "a"), ("assistant", " \n\t\u3000")), "skip"),
        lines("unknown_message_key", "openai",
              {"messages": [{"role": "user", "content": "q", "contnet": 1}, {"role": "assistant", "content": "a"}]},
              "skip"),
        lines("tool_calls_not_json", "openai",
              {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": "{"}]},
              "skip"),
        lines("tool_calls_numbers", "openai",
              {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [1, 2]}]},
              "skip"),
        lines("tool_call_without_name", "openai",
              {"messages": [{"role": "user", "content": "q"},
                            {"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": "{}"}}]}]},
              "skip"),
        lines("tools_not_a_list", "openai", {**GOOD["openai"], "tools": 7}, "skip"),
        lines("tools_bad_json_text", "openai", {**GOOD["openai"], "tools": "[{"}, "skip"),
        lines("tool_call_deep_arguments", "openai",
              {"messages": [{"role": "user", "content": "q"},
                            {"role": "assistant", "content": "",
                             "tool_calls": [{"type": "function", "function": {
                                 "name": "f", "arguments": json.loads('{"a":' * 400 + "1" + "}" * 400)}}]},
                            {"role": "tool", "content": "r"}, {"role": "assistant", "content": "done"}]},
              "drop"),  # rendered and tokenised (no recursion error), then too long for max_length
        lines("other_format_in_file", "openai", GOOD["alpaca"], "skip"),
        # -- the other conversation formats -----------------------------------------------------------------------------
        lines("alpaca_missing_output", "alpaca", {"instruction": "q", "input": ""}, "skip"),
        lines("alpaca_output_number", "alpaca", {"instruction": "q", "output": 3}, "skip"),
        lines("alpaca_instruction_list", "alpaca", {"instruction": ["q"], "output": "a"}, "skip"),
        lines("alpaca_input_number", "alpaca", {"instruction": "q", "input": 2, "output": "a"}, "skip"),
        lines("alpaca_history_not_pairs", "alpaca", {"instruction": "q", "output": "a", "history": [["x"]]}, "skip"),
        lines("alpaca_history_string", "alpaca", {"instruction": "q", "output": "a", "history": "x"}, "skip"),
        lines("alpaca_system_number", "alpaca", {"instruction": "q", "output": "a", "system": 1}, "skip"),
        lines("alpaca_empty_output", "alpaca", {"instruction": "q", "output": ""}, "skip"),
        lines("alpaca_nulls", "alpaca", {"instruction": "q", "input": None, "output": "a", "system": None,
                                         "history": None}, "keep"),
        lines("sharegpt_not_list", "sharegpt", {"conversations": 5}, "skip"),
        lines("sharegpt_turn_string", "sharegpt", {"conversations": ["hi"]}, "skip"),
        lines("sharegpt_missing_from", "sharegpt", {"conversations": [{"value": "q"}]}, "skip"),
        lines("sharegpt_unknown_speaker", "sharegpt", {"conversations": [{"from": "alien", "value": "q"}]}, "skip"),
        lines("sharegpt_value_number", "sharegpt",
              {"conversations": [{"from": "human", "value": 1}, {"from": "gpt", "value": "a"}]}, "skip"),
        lines("sharegpt_literal_list_broken", "sharegpt", {"conversations": "[{'from': 'human'"}, "skip"),
        lines("sharegpt_function_call_not_json", "sharegpt",
              {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "{oops"}]},
              "skip"),
        lines("sharegpt_starts_with_gpt", "sharegpt",
              {"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}, "skip"),
        lines("sharegpt_empty", "sharegpt", {"conversations": []}, "skip"),
        lines("firefly_not_list", "firefly", {"conversation": {"human": "q"}}, "skip"),
        lines("firefly_missing_assistant", "firefly", {"conversation": [{"human": "q"}]}, "skip"),
        lines("firefly_human_number", "firefly", {"conversation": [{"human": 1, "assistant": "a"}]}, "skip"),
        lines("firefly_turn_string", "firefly", {"conversation": ["q"]}, "skip"),
        lines("moss_chat_not_object", "moss", {"meta_instruction": "", "chat": "x"}, "skip"),
        lines("moss_turn_gap", "moss", {"meta_instruction": "", "chat": {"turn_1": GOOD["moss"]["chat"]["turn_1"],
                                                                         "turn_3": GOOD["moss"]["chat"]["turn_1"]}},
              "skip"),
        lines("moss_missing_moss", "moss", {"meta_instruction": "", "chat": {"turn_1": {"Human": "q"}}}, "skip"),
        lines("moss_human_number", "moss", {"meta_instruction": "", "chat": {"turn_1": {"Human": 1, "MOSS": "a"}}},
              "skip"),
        lines("columns_missing_response", "columns", {"query": "q"}, "skip"),
        lines("columns_response_number", "columns", {"query": "q", "response": 4}, "skip"),
        lines("columns_prompt_null", "columns", {"query": None, "response": "a"}, "skip"),
        lines("glaive_chat_number", "glaive", {"system": "SYSTEM: x", "chat": 1}, "skip"),
        lines("glaive_no_turns", "glaive", {"system": "SYSTEM: x", "chat": "nothing here"}, "skip"),
        lines("glaive_bad_call", "glaive", {"system": "SYSTEM: x",
                                            "chat": "USER: q\n\n\nASSISTANT: <functioncall> {oops <|endoftext|>"}, "skip"),
        # -- raw text (stage pt) -------------------------------------------------------------------------------------------
        lines("text_number", "text", {"text": 5}, "skip"),
        lines("text_missing", "text", {"body": "x"}, "skip"),
        lines("text_empty", "text", {"text": ""}, "drop"),
        lines("text_null", "text", {"text": None}, "skip"),
        raw("txt_invalid_utf8", ".txt", "text", b"one\n\xff\xfe two\nthree\n", "skip", ":2"),
        raw("txt_over_max_record_bytes", ".txt", "text", b"one\n" + BIG.encode() + b"\nthree\n", "skip", ":2"),
        raw("txt_crlf_bom_blank", ".txt", "text", b"\xef\xbb\xbfone\r\n\r\n  \r\ntwo\r\n", "keep", kept=2),
        raw("txt_nul_and_controls", ".txt", "text", b"a\x00b\n\x1b[0m\x07\nend", "keep", kept=3),
        raw("txt_empty", ".txt", "text", b"", "keep", kept=0),
        raw("txt_only_blank", ".txt", "text", b"\n\n \t \n", "keep", kept=0),
        # -- preference pairs (stage dpo) and kto --------------------------------------------------------------------------
        lines("pairs_missing_rejected", "pairs", {"prompt": "q", "chosen": "a"}, "skip"),
        lines("pairs_chosen_number", "pairs", {"prompt": "q", "chosen": 1, "rejected": "b"}, "skip"),
        lines("pairs_identical", "pairs", {"prompt": "q", "chosen": "same", "rejected": "same"}, "drop"),
        lines("pairs_empty_answer", "pairs", {"prompt": "q", "chosen": "", "rejected": "b"}, "drop"),
        lines("pairs_prompt_list_of_numbers", "pairs", {"prompt": [1], "chosen": "a", "rejected": "b"}, "skip"),
        lines("kto_label_string", "kto", {**GOOD["kto"], "label": "yes"}, "skip"),
        lines("kto_ends_with_user", "kto", {"messages": [{"role": "user", "content": "q"}], "label": False}, "skip"),
        # -- JSON arrays -------------------------------------------------------------------------------------------------
        array("array_item_number", "openai", b"7", "skip"),
        array("array_item_null", "openai", b"null", "skip"),
        array("array_item_list", "openai", b"[1]", "skip"),
        array("array_lone_surrogate", "openai", _msgs(("user", "\ud800"), ("assistant", "x")), "skip"),
        array("array_deep", "openai", deep.encode(), "skip"),
        array("array_huge_integer", "openai", b'{"n": ' + b"1" * 5000 + b"}", "skip"),
        array("array_bad_record", "openai", {"messages": 3}, "skip"),
        array("array_weight_nan", "openai", b'{"messages": [{"role": "user", "content": "q"}, '
                                            b'{"role": "assistant", "content": "a", "weight": NaN}]}', "skip"),
        array("array_broken_item", "openai", b'{"messages": [}', "fatal"),
        array("array_invalid_utf8", "openai", b'{"messages": "\xff"}', "fatal"),
        array("array_over_max_record_bytes", "openai", _msgs(("user", BIG), ("assistant", "y")), "skip"),
        raw("array_truncated", ".json", "openai", b"[" + _dumps(GOOD["openai"]) + b",\n" + _dumps(GOOD["openai"])[:20],
            "fatal", ":2"),
        raw("array_unclosed", ".json", "openai", b"[" + _dumps(GOOD["openai"]) + b",\n", "fatal", ":2"),
        raw("array_then_more", ".json", "openai", b"[" + _dumps(GOOD["openai"]) + b"]\n[" + _dumps(GOOD["openai"]) + b"]",
            "fatal", ":2"),
        raw("array_empty", ".json", "openai", b"[]", "keep", kept=0),
        raw("array_trailing_comma_bom", ".json", "openai", b"\xef\xbb\xbf [" + _dumps(GOOD["openai"]) + b",]", "keep",
            kept=1),
        raw("array_pretty_printed", ".json", "openai", json.dumps([GOOD["openai"]] * 2, indent=2).encode(), "keep"),
        raw("json_one_pretty_object", ".json", "openai", json.dumps(GOOD["openai"], indent=2).encode(), "keep", kept=1),
        raw("json_pretty_objects_in_a_row", ".json", "openai",
            (json.dumps(GOOD["openai"], indent=2) + "\n" + json.dumps(GOOD["sharegpt"], indent=2)).encode(), "skip",
            ":13", kept=1),
        raw("json_whitespace_only", ".json", "openai", b"  \n\n", "keep", kept=0),
        # -- CSV ---------------------------------------------------------------------------------------------------------
        raw("csv_extra_cells", ".csv", "columns", b"query,response\nq,a\nq,a,surplus\nq2,a2\n", "skip", ":3"),
        raw("csv_short_row", ".csv", "columns", b"query,response,system\nq,a\nq2\nq3,a3\n", "skip", ":3"),
        raw("csv_quoted_newlines", ".csv", "columns", b'query,response\n"multi\nline",a\nq,"b\n\nc"\nq3,a3\n', "keep",
            kept=3),
        raw("csv_header_only", ".csv", "columns", b"query,response\n", "keep", kept=0),
        raw("csv_empty", ".csv", "columns", b"", "keep", kept=0),
        raw("csv_long_cell", ".csv", "columns", b"query,response\nq," + b"w " * 100_000 + b"\nq2,a2\n", "drop", ":2",
            kept=1),
        raw("csv_line_separators_in_cells", ".csv", "columns",
            "query,response\nq\u2028q,a\x85a\u2029\nq2,a\x0cb\x1c\n".encode(), "keep", kept=2),
        raw("csv_invalid_utf8", ".csv", "columns", b"query,response\nq,a\n\xfe,x\n", "fatal", ":3"),
        raw("csv_crlf_bom", ".csv", "columns", b"\xef\xbb\xbfquery,response\r\nq,a\r\nq2,a2\r\n", "keep"),
        raw("csv_nul_byte", ".csv", "columns", b"query,response\nq,a\x00b\nq2,a2\n", "keep"),
        raw("csv_semicolons", ".csv", "columns", b"query;response\nq;a\n", "skip", ":2", kept=0),
        raw("csv_unterminated_quote", ".csv", "columns", b'query,response\nq,a\nq2,"never closed\nq3,a3\n', "fatal",
            ":3"),
        raw("csv_text_after_quote", ".csv", "columns", b'query,response\nq,"a"b\n', "fatal", ":2"),
        raw("csv_empty_cells", ".csv", "columns", b"query,response\n,\nq,a\n", "skip", ":2", kept=1),
        # -- Parquet -----------------------------------------------------------------------------------------------------
        parquet("parquet_optional_field_null", "openai",
                {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0.5}]},
                "keep"),
        parquet("parquet_content_null", "openai", {"messages": [{"role": "user", "content": None},
                                                                {"role": "assistant", "content": "a"}]}, "skip"),
        parquet("parquet_null_message", "openai", {"messages": [None, {"role": "assistant", "content": "a"}]}, "skip"),
        parquet("parquet_messages_null", "openai", {"messages": None}, "skip"),
        parquet("parquet_alpaca_nulls", "alpaca", {"instruction": "q", "input": None, "output": "a"}, "keep"),
        parquet("parquet_moss_fewer_turns", "moss",
                {"meta_instruction": "", "chat": {"turn_1": GOOD["moss"]["chat"]["turn_1"],
                                                  "turn_2": GOOD["moss"]["chat"]["turn_1"]}}, "keep"),
        parquet("parquet_text_null", "text", {"text": None}, "skip"),
        raw("parquet_binary_text", ".parquet", "text", parquet_bytes([{"text": b"bytes"}]), "skip", ":row 1", kept=0),
        raw("parquet_not_parquet", ".parquet", "openai", b"PAR1 this is not parquet", "fatal", ""),
        raw("parquet_truncated", ".parquet", "openai", parquet_bytes([GOOD["openai"]] * 3)[:-30], "fatal", ""),
        raw("parquet_damaged_page", ".parquet", "openai", (lambda b: b[:20] + b"\0" * 40 + b[60:])(
            parquet_bytes([GOOD["openai"]] * 3)), "fatal", ":row 1"),
        raw("parquet_empty_table", ".parquet", "openai", _empty_parquet(), "keep", kept=0),
        # -- folders and paths -------------------------------------------------------------------------------------------
        Case("folder_mixed_formats", "folder", "openai",
             {"mixed/a.jsonl": _dumps(GOOD["openai"]) + b"\n", "mixed/b/c.json": b"[" + _dumps(GOOD["sharegpt"]) + b"]",
              "mixed/d.csv": b"query,response\nq,a\n", "mixed/e.parquet": parquet_bytes([GOOD["alpaca"]]),
              "mixed/notes.md": b"# not data", "mixed/F.JSONL": _dumps(GOOD["firefly"]) + b"\n"},
             "keep", path="mixed", kept=5),
        Case("folder_with_bad_files", "folder", "openai",
             {"bad/ok.jsonl": _dumps(GOOD["openai"]) + b"\n", "bad/broken.jsonl": b"{\n",
              "bad/empty.jsonl": b"", "bad/.hidden.jsonl": _dumps(GOOD["openai"]) + b"\n"},
             "skip", ":1", bad="bad/broken.jsonl", path="bad", kept=2),
        Case("folder_without_data", "folder", "openai", {"nodata/readme.md": b"x"}, "fatal", "", bad="nodata",
             path="nodata"),
        Case("path_missing", "path", "openai", {"there.jsonl": b"{}\n"}, "fatal", "", bad="not-there.jsonl",
             path="not-there.jsonl"),
        Case("path_unsupported_suffix", "path", "openai", {"data.yaml": b"a: 1\n"}, "fatal", ""),
    ]
    return cases


def _empty_parquet() -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table({"messages": pa.array([], pa.list_(pa.struct([("role", pa.string()),
                                                                          ("content", pa.string())])))}), buffer)
    return buffer.getvalue()


CORPUS = _corpus()
