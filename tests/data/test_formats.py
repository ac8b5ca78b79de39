"""Every input layout and file type → the expected `Conversation`, with per-file detection, sampling and splits."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from ember.data.conversation import Conversation
from ember.data.pipeline import load_records
from ember.data.recipes import CHAT, TEXT
from ember.data.report import DataReport
from ember.errors import DataError


def read(cfg) -> list:
    return load_records(cfg.data, TEXT if cfg.stage == "pt" else CHAT, DataReport()).train


def turns(conv: Conversation) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in conv.messages]


ALPACA = [
    {"instruction": "Translate", "input": "hello", "output": "bonjour", "system": "You translate.",
     "history": [["Hi", "Hello!"], ["How are you?", "Fine."]]},
    {"instruction": "Name a colour", "input": "", "output": "Blue"},
]


def test_alpaca_input_system_history(write, make_config):
    path = write("a.json", ALPACA)
    first, second = read(make_config([{"path": str(path)}]))
    assert turns(first) == [
        ("system", "You translate."),
        ("user", "Hi"), ("assistant", "Hello!"),
        ("user", "How are you?"), ("assistant", "Fine."),
        ("user", "Translate\nhello"), ("assistant", "bonjour"),
    ]
    assert turns(second) == [("user", "Name a colour"), ("assistant", "Blue")]
    assert first.source == f"{path}:2" and second.source == f"{path}:18"  # line of each object in the array


def test_sharegpt_system_tools_function_call_observation(write, make_config):
    tools = [{"name": "get_weather", "description": "Weather of a city", "parameters": {"type": "object"}}]
    records = [
        {"conversations": [
            {"from": "human", "value": "Weather in Paris?"},
            {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
            {"from": "observation", "value": '{"temp": 21}'},
            {"from": "gpt", "value": "It is 21 degrees."},
        ], "system": "Use tools.", "tools": json.dumps(tools)},
        {"conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello"},
        ]},
    ]
    tool_conv, plain = read(make_config([{"path": str(write("s.jsonl", records))}]))
    assert turns(tool_conv) == [
        ("system", "Use tools."), ("user", "Weather in Paris?"), ("assistant", ""),
        ("tool", '{"temp": 21}'), ("assistant", "It is 21 degrees."),
    ]
    assert tool_conv.messages[2].tool_calls == [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    ]
    assert tool_conv.tools == [{"type": "function", "function": tools[0]}]  # the JSON string parsed, OpenAI-shaped
    assert turns(plain) == [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello")]
    assert plain.tools is None


def test_openai_messages_train_flag_and_weight(write, make_config):
    record = {"messages": [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b", "train": False},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d", "weight": 0.5},
        {"role": "user", "content": "e"},
        {"role": "assistant", "content": "f", "loss": True},  # LLaMA-Factory's spelling of the same flag
    ]}
    (conv,) = read(make_config([{"path": str(write("o.jsonl", [record]))}]))
    assert [(m.role, m.content, m.train, m.weight) for m in conv.messages] == [
        ("system", "S", None, 1.0), ("user", "a", None, 1.0), ("assistant", "b", False, 1.0),
        ("user", "c", None, 1.0), ("assistant", "d", None, 0.5), ("user", "e", None, 1.0),
        ("assistant", "f", True, 1.0),
    ]


def test_openai_tool_role(write, make_config):
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
    record = {"messages": [
        {"role": "user", "content": "1+2?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "3", "tool_call_id": "c1"},
        {"role": "assistant", "content": "3"},
    ], "tools": [{"type": "function", "function": {"name": "add"}}]}
    (conv,) = read(make_config([{"path": str(write("t.jsonl", [record]))}]))
    assert turns(conv) == [("user", "1+2?"), ("assistant", ""), ("tool", "3"), ("assistant", "3")]
    # arguments become an object, so a template's `arguments | tojson` writes them once
    assert conv.messages[1].tool_calls == [{**call, "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}]
    assert conv.tools == [{"type": "function", "function": {"name": "add"}}]


def test_firefly(write, make_config):
    record = {"conversation_id": 7, "category": "Brainstorming", "system": "Think.",
              "conversation": [{"human": "h1", "assistant": "a1"}, {"human": "h2", "assistant": "a2"}]}
    (conv,) = read(make_config([{"path": str(write("f.jsonl", [record]))}]))
    assert turns(conv) == [("system", "Think."), ("user", "h1"), ("assistant", "a1"), ("user", "h2"), ("assistant", "a2")]
    assert conv.meta == {"category": "Brainstorming", "conversation_id": 7}


def test_promptcblue_columns(write, make_config):
    record = {"input": "判断句子类别：无吸烟史\n选项：吸烟状况，其他", "target": "吸烟状况",
              "answer_choices": ["吸烟状况", "其他"], "task_type": "cls", "task_dataset": "CHIP-CTC", "sample_id": "train-35923"}
    (conv,) = read(make_config([{"path": str(write("train.json", [record] ))}]))
    assert turns(conv) == [("user", record["input"]), ("assistant", "吸烟状况")]
    assert conv.meta == {"task_type": "cls", "task_dataset": "CHIP-CTC", "answer_choices": ["吸烟状况", "其他"],
                         "sample_id": "train-35923"}


def test_query_response_history_columns(write, make_config):
    record = {"query": "And 3+3?", "response": "6", "history": [["1+1?", "2"], ["2+2?", "4"]]}
    (conv,) = read(make_config([{"path": str(write("q.jsonl", [record]))}]))
    assert turns(conv) == [("user", "1+1?"), ("assistant", "2"), ("user", "2+2?"), ("assistant", "4"),
                           ("user", "And 3+3?"), ("assistant", "6")]


def test_column_mapping_is_configurable(write, make_config):
    record = {"question_text": "Capital of France?", "context": "Geography quiz.", "answer_text": "Paris",
              "persona": "Be terse.", "past": [["Capital of Italy?", "Rome"]]}
    columns = {"prompt": "question_text", "query": "context", "response": "answer_text", "system": "persona",
               "history": "past"}
    (conv,) = read(make_config([{"path": str(write("c.jsonl", [record])), "format": "columns", "columns": columns}]))
    assert turns(conv) == [("system", "Be terse."), ("user", "Capital of Italy?"), ("assistant", "Rome"),
                           ("user", "Capital of France?\nGeography quiz."), ("assistant", "Paris")]


MOSS = {
    "conversation_id": "1", "meta_instruction": "You are an AI assistant whose name is MOSS.\n", "num_turns": 2,
    "chat": {
        "turn_1": {"Human": "<|Human|>: 你好<eoh>\n", "Inner Thoughts": "<|Inner Thoughts|>: None<eot>\n",
                   "Commands": "<|Commands|>: None<eoc>\n", "Tool Responses": "<|Results|>: None<eor>\n",
                   "MOSS": "<|MOSS|>: 你好！有什么可以帮你？<eom>\n"},
        "turn_2": {"Human": "<|Human|>: 讲个笑话<eoh>\n", "MOSS": "<|MOSS|>: 好的。<eom>\n"},
    },
    "category": "harmless_zh",
}


def test_moss_tags_and_end_markers_stripped(write, make_config):
    (conv,) = read(make_config([{"path": str(write("m.jsonl", [MOSS]))}]))
    assert turns(conv) == [("system", "You are an AI assistant whose name is MOSS."), ("user", "你好"),
                           ("assistant", "你好！有什么可以帮你？"), ("user", "讲个笑话"), ("assistant", "好的。")]
    assert conv.meta == {"category": "harmless_zh"}


def test_raw_text_jsonl_and_txt(write, make_config):
    jsonl = write("doc.jsonl", [{"text": "First document."}, {"text": "Second one."}])
    txt = write("doc.txt", "Line one.\n\nLine two.\n")
    assert read(make_config([{"path": str(jsonl)}, {"path": str(txt)}], stage="pt")) == [
        "First document.", "Second one.", "Line one.", "Line two."
    ]


SAME = [
    {"instruction": "Say hi", "input": "", "output": "hi"},
    {"instruction": "Add", "input": "1, 2", "output": "3"},
    {"instruction": "Multi\nline", "input": "", "output": "yes, \"quoted\""},
]


@pytest.mark.parametrize(
    ("name", "content", "sources"),
    [
        ("a.json", SAME, ["2", "7", "12"]),
        ("a.jsonl", SAME, ["1", "2", "3"]),
        ("lines.json", "".join(json.dumps(r) + "\n" for r in SAME), ["1", "2", "3"]),  # JSON lines named .json
        ("a.csv", SAME, ["2", "3", "4"]),  # the quoted newline in row 3 spans lines 4-5; a row is named by its first
        ("a.parquet", SAME, ["row 1", "row 2", "row 3"]),
    ],
)
def test_file_types_give_the_same_conversations(write, make_config, name, content, sources):
    path = write(name, content)
    convs = read(make_config([{"path": str(path)}]))
    assert [turns(c) for c in convs] == [
        [("user", "Say hi"), ("assistant", "hi")],
        [("user", "Add\n1, 2"), ("assistant", "3")],
        [("user", "Multi\nline"), ("assistant", 'yes, "quoted"')],
    ]
    assert [c.source for c in convs] == [f"{path}:{s}" for s in sources]


def test_json_array_with_byte_order_mark(write, make_config):
    path = write("bom.json", b"\xef\xbb\xbf" + json.dumps(SAME[:1]).encode())
    (conv,) = read(make_config([{"path": str(path)}]))
    assert turns(conv) == [("user", "Say hi"), ("assistant", "hi")]


def test_detection_is_per_file(write, make_config):
    alpaca = write("a.jsonl", SAME[:1])
    sharegpt = write("s.jsonl", [{"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}]}])
    firefly = write("f.jsonl", [{"conversation": [{"human": "p", "assistant": "q"}]}])
    convs = read(make_config([{"path": str(alpaca)}, {"path": str(sharegpt)}, {"path": str(firefly)}]))
    assert [turns(c) for c in convs] == [[("user", "Say hi"), ("assistant", "hi")], [("user", "x"), ("assistant", "y")],
                                         [("user", "p"), ("assistant", "q")]]


def test_format_override(write, make_config):
    # Both alpaca (instruction/output) and PromptCBLUE (input/target) columns: detection picks alpaca.
    record = {"instruction": "I", "input": "X", "output": "O", "target": "T"}
    path = write("both.jsonl", [record])
    (auto,) = read(make_config([{"path": str(path)}]))
    (forced,) = read(make_config([{"path": str(path), "format": "columns"}]))
    assert turns(auto) == [("user", "I\nX"), ("assistant", "O")]
    assert turns(forced) == [("user", "X"), ("assistant", "T")]


def test_format_override_that_does_not_fit_names_the_field(write, make_config):
    path = write("a.jsonl", SAME[:1])
    with pytest.raises(DataError, match=rf"^{path}:1: field 'conversations': missing required field; the record has "):
        read(make_config([{"path": str(path), "format": "sharegpt"}]))


def test_undetectable_record(write, make_config):
    path = write("x.jsonl", [{"foo": 1, "bar": 2}])
    with pytest.raises(DataError, match=r"x.jsonl:1: cannot detect the format from fields \['bar', 'foo'\].*set format:"):
        read(make_config([{"path": str(path)}]))


def _numbered(n: int) -> list[dict]:
    return [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(n)]


def _ids(convs) -> list[str]:
    return [c.messages[0].content for c in convs]


def test_samples_and_ratio(write, make_config):
    path = str(write("n.jsonl", _numbered(5)))
    three = _ids(read(make_config([{"path": path, "samples": 3}])))
    assert len(three) == 3 and len(set(three)) == 3 and set(three) <= {f"q{i}" for i in range(5)}
    assert len(read(make_config([{"path": path, "ratio": 0.4}]))) == 2
    # ratio > 1 and samples > size upsample: the whole set repeats, then a part of it.
    assert Counter(_ids(read(make_config([{"path": path, "ratio": 2.0}])))) == {f"q{i}": 2 for i in range(5)}
    seven = Counter(_ids(read(make_config([{"path": path, "samples": 7}]))))
    assert sum(seven.values()) == 7 and set(seven) == {f"q{i}" for i in range(5)} and sorted(seven.values()) == [1, 1, 1, 2, 2]
    # sampling is seeded: the same config draws the same records
    assert _ids(read(make_config([{"path": path, "samples": 3}]))) == three


def test_eval_file_and_eval_split(write, make_config):
    train = str(write("train.jsonl", _numbered(8)))
    held = str(write("dev.jsonl", [{"instruction": "dev", "input": "", "output": "x"}]))
    cfg = make_config([{"path": train}, {"path": held, "split": "eval"}])
    records = load_records(cfg.data, CHAT, DataReport())
    assert _ids(records.train) == [f"q{i}" for i in range(8)]
    assert _ids(records.eval) == ["dev"]

    cfg = make_config([{"path": train}], eval_split=0.25, shuffle=True)
    records = load_records(cfg.data, CHAT, DataReport())
    assert len(records.train) == 6 and len(records.eval) == 2
    assert sorted(_ids(records.train) + _ids(records.eval)) == sorted(f"q{i}" for i in range(8))
    again = load_records(cfg.data, CHAT, DataReport())
    assert _ids(again.eval) == _ids(records.eval)  # seeded split


def test_dataset_system_prompt_fills_only_missing_ones(write, make_config):
    path = write("s.jsonl", [SAME[0], {**SAME[1], "system": "Own."}])
    first, second = read(make_config([{"path": str(path), "system": "Default."}]))
    assert first.system == "Default." and second.system == "Own."
