"""Record → `Conversation` (or raw text) for each supported layout, plus per-file format detection."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, Optional

from ember.data.agent_formats import MS_MARKERS, from_glaive, split_msagent
from ember.data.conversation import Conversation, Message, validate_conversation
from ember.data.tools import calls_from_text, literal_list, normalize_calls, normalize_tools
from ember.errors import DataError

# Column names tried, in order, when `format: columns` is detected without an explicit mapping.
COLUMN_PAIRS = (("input", "target"), ("query", "response"), ("prompt", "response"), ("prompt", "completion"),
                ("question", "answer"))

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
                  "bard": "assistant", "bing": "assistant", "system": "system", "function_call": "assistant",
                  "observation": "tool", "tool": "tool", "function": "tool", "tool_call": "assistant",
                  "function-call": "assistant", "tool_response": "tool", "function_response": "tool",
                  "function-response": "tool"}
# speakers (sharegpt) and roles (openai, ms-swift) whose value is a call as JSON text, joined to the assistant turn
CALL_SPEAKERS = {"function_call", "tool_call", "function-call"}
MESSAGE_KEYS = {"role", "content", "train", "weight", "tool_calls", "name", "tool_call_id", "loss", "function_call"}
OPENAI_ROLES = {"function": "tool", "tool_response": "tool"}  # legacy OpenAI and ms-swift names of the tool role


def detect_format(record: dict[str, Any]) -> str:
    keys = set(record)
    if "messages" in keys:
        return "openai"
    if "conversations" in keys:
        return "sharegpt"
    if "conversation" in keys:
        return "firefly"
    if "chat" in keys and "meta_instruction" in keys:
        return "moss"
    if "chat" in keys and isinstance(record["chat"], str):
        return "glaive"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    if any(a in keys and b in keys for a, b in COLUMN_PAIRS):
        return "columns"
    if "text" in keys:
        return "text"
    raise ValueError(
        f"cannot detect the format from fields {sorted(keys)}: expected messages (openai), conversations (sharegpt), "
        "conversation (firefly), chat text (glaive), instruction+output (alpaca), input+target / query+response "
        "(columns) or text; "
        "set format: in the dataset entry"
    )


def _require(record: dict[str, Any], key: str, source: str, kind: type | tuple = str, within: str = "") -> Any:
    """record[key], of type `kind`; `within` is the field path of `record` inside the whole record (error messages)."""
    field = f"{within}.{key}" if within else key
    if key not in record:
        close = difflib.get_close_matches(key, [str(k) for k in record], n=1)
        hint = f" (found '{close[0]}': misspelt?)" if close else f"; the record has {sorted(record)}"
        raise DataError(source, field, f"missing required field{hint}")
    value = record[key]
    if not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(source, field, f"expected {want}, got {type(value).__name__}")
    return value


def _optional_text(record: dict[str, Any], key: str, source: str) -> Optional[str]:
    value = record.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise DataError(source, key, f"expected a string, got {type(value).__name__}")
    return value


def _history_pairs(history: Any, source: str, field: str) -> list[Message]:
    if history in (None, ""):
        return []
    if not isinstance(history, list):
        raise DataError(source, field, f"expected a list of [question, answer] pairs, got {type(history).__name__}")
    out = []
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise DataError(source, f"{field}[{i}]", "expected a [question, answer] pair of strings")
        out += [Message("user", pair[0]), Message("assistant", pair[1])]
    return out


def from_alpaca(record: dict[str, Any], source: str, columns: dict[str, str]) -> Conversation:
    instruction = _require(record, "instruction", source)
    extra = _optional_text(record, "input", source)
    output = _require(record, "output", source)
    prompt = f"{instruction}\n{extra}" if extra else instruction
    msgs = _history_pairs(record.get("history"), source, "history") + [Message("user", prompt), Message("assistant", output)]
    system = _optional_text(record, "system", source)
    return Conversation(([Message("system", system)] if system else []) + msgs, source)


def from_sharegpt(record: dict[str, Any], source: str, columns: dict[str, str]) -> Conversation:
    turns = _require(record, "conversations", source, (list, str))
    if isinstance(turns, str):  # MSAgent-Bench and some exports store the list as text
        turns = literal_list(turns, source, "conversations")
    msgs: list[Message] = []
    system = _optional_text(record, "system", source)
    if system:
        msgs.append(Message("system", system))
    for i, turn in enumerate(turns):
        field = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise DataError(source, field, f"expected an object with from/value, got {type(turn).__name__}")
        speaker = _require(turn, "from", source, within=field)
        value = _require(turn, "value", source, within=field)
        role = SHAREGPT_ROLES.get(str(speaker).lower())
        if role is None:
            raise DataError(source, f"{field}.from", f"unknown speaker '{speaker}': expected one of {sorted(SHAREGPT_ROLES)}")
        if str(speaker).lower() in CALL_SPEAKERS:
            _add_calls(msgs, calls_from_text(value, source, f"{field}.value"))
        elif role == "assistant" and isinstance(value, str) and any(m in value for m in MS_MARKERS):
            msgs += split_msagent(value, source, f"{field}.value")
        else:
            msgs.append(Message(role, value))
    return Conversation(msgs, source, tools=normalize_tools(record.get("tools"), source))


def _add_calls(msgs: list[Message], calls: list[dict[str, Any]]) -> None:
    """A call turn joins the assistant turn it follows (its text, or its earlier calls: parallel calls come as
    one turn each in ms-swift data); otherwise it is an assistant turn of its own."""
    last = msgs[-1] if msgs else None
    if last is not None and last.role == "assistant":
        last.tool_calls = (last.tool_calls or []) + calls
    else:
        msgs.append(Message("assistant", "", tool_calls=calls))


def from_openai(record: dict[str, Any], source: str, columns: dict[str, str]) -> Conversation:
    raw = _require(record, "messages", source, list)
    msgs = []
    for i, m in enumerate(raw):
        field = f"messages[{i}]"
        if not isinstance(m, dict):
            raise DataError(source, field, f"expected an object with role/content, got {type(m).__name__}")
        for key in m:
            if key not in MESSAGE_KEYS:
                close = difflib.get_close_matches(key, sorted(MESSAGE_KEYS), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f"; expected {sorted(MESSAGE_KEYS)}"
                raise DataError(source, f"{field}.{key}", f"unknown field{hint}")
        role = _require(m, "role", source, str, within=field)
        role = OPENAI_ROLES.get(role, role)
        content = m.get("content")
        calls = normalize_calls(m.get("tool_calls"), source, f"{field}.tool_calls")
        if m.get("function_call") is not None:  # the legacy single-call field
            calls = (calls or []) + calls_from_text(m["function_call"], source, f"{field}.function_call")
        if role in CALL_SPEAKERS:  # ms-swift: {"role": "tool_call", "content": "{\"name\": ..., \"arguments\": ...}"}
            _add_calls(msgs, calls_from_text(content, source, f"{field}.content"))
            continue
        if content is None and calls:
            content = ""
        if content is None:
            raise DataError(source, f"{field}.content", "missing: every message needs its text")
        if not isinstance(content, str):
            raise DataError(source, f"{field}.content", f"expected a string, got {type(content).__name__}")
        train = m["train"] if m.get("train") is not None else m.get("loss")  # null = absent (Arrow, pandas)
        if train is not None and not isinstance(train, bool):
            raise DataError(source, f"{field}.train", f"expected true or false, got {train!r}")
        weight = m["weight"] if m.get("weight") is not None else 1.0
        if not isinstance(weight, (int, float)) or isinstance(weight, bool):
            raise DataError(source, f"{field}.weight", f"expected a number, got {weight!r}")
        msgs.append(Message(role, content, train=train, weight=float(weight), tool_calls=calls))
    return Conversation(msgs, source, tools=normalize_tools(record.get("tools"), source))


def from_firefly(record: dict[str, Any], source: str, columns: dict[str, str]) -> Conversation:
    turns = _require(record, "conversation", source, list)
    msgs: list[Message] = []
    system = _optional_text(record, "system", source)
    if system:
        msgs.append(Message("system", system))
    for i, turn in enumerate(turns):
        field = f"conversation[{i}]"
        if not isinstance(turn, dict):
            raise DataError(source, field, "expected an object with human/assistant")
        msgs.append(Message("user", _require(turn, "human", source, within=field)))
        msgs.append(Message("assistant", _require(turn, "assistant", source, within=field)))
    return Conversation(msgs, source, meta={k: record[k] for k in ("category", "conversation_id") if k in record})


def from_moss(record: dict[str, Any], source: str, columns: dict[str, str]) -> Conversation:
    """moss-003-sft: role tags and end markers (`<|Human|>: …<eoh>`) are stripped; the template adds its own."""
    chat = _require(record, "chat", source, dict)
    msgs = []
    system = _optional_text(record, "meta_instruction", source)
    if system:
        msgs.append(Message("system", system.strip()))
    for i in range(1, len(chat) + 1):
        turn = chat.get(f"turn_{i}")
        if not isinstance(turn, dict):
            raise DataError(source, f"chat.turn_{i}", "missing turn (turns must be numbered turn_1, turn_2, ...)")
        where = f"chat.turn_{i}"
        msgs.append(Message("user", _strip_moss(_require(turn, "Human", source, within=where), "<|Human|>:", "<eoh>")))
        msgs.append(Message("assistant", _strip_moss(_require(turn, "MOSS", source, within=where), "<|MOSS|>:", "<eom>")))
    return Conversation(msgs, source, meta={"category": record.get("category")})


def _strip_moss(text: str, tag: str, end: str) -> str:
    text = text.strip()
    if text.startswith(tag):
        text = text[len(tag):]
    if text.endswith(end):
        text = text[: -len(end)]
    return text.strip()


def from_columns(record: dict[str, Any], source: str, columns: dict[str, str]) -> Conversation:
    mapping = dict(columns)
    if "prompt" not in mapping or "response" not in mapping:
        pair = next(((a, b) for a, b in COLUMN_PAIRS if a in record and b in record), None)
        if pair is None:
            raise DataError(source, None, f"this record has no prompt/response column pair (its fields: "
                                          f"{sorted(record)}); set columns: {{prompt: NAME, response: NAME}} in the "
                                          "dataset entry")
        mapping.setdefault("prompt", pair[0])
        mapping.setdefault("response", pair[1])
    prompt = _require(record, mapping["prompt"], source)
    response = _require(record, mapping["response"], source)
    query_col = mapping.get("query")
    if query_col and record.get(query_col):
        prompt = f"{prompt}\n{record[query_col]}"
    history = _history_pairs(record.get(mapping.get("history", "history")), source, mapping.get("history", "history"))
    system = _optional_text(record, mapping.get("system", "system"), source)
    meta = {k: record[k] for k in ("task_type", "task_dataset", "answer_choices", "sample_id") if k in record}
    msgs = ([Message("system", system)] if system else []) + history
    return Conversation(msgs + [Message("user", prompt), Message("assistant", response)], source, meta=meta)


def from_text(record: dict[str, Any], source: str, columns: dict[str, str]) -> str:
    text = _require(record, columns.get("text", "text"), source)
    return text


CONVERTERS: dict[str, Callable[[dict[str, Any], str, dict[str, str]], Any]] = {
    "alpaca": from_alpaca,
    "sharegpt": from_sharegpt,
    "openai": from_openai,
    "firefly": from_firefly,
    "moss": from_moss,
    "glaive": from_glaive,
    "columns": from_columns,
    "text": from_text,
}


def convert(fmt: str, record: dict[str, Any], source: str, columns: dict[str, str], system: str | None = None):
    """Convert and validate one record; raises DataError naming the file:line and field."""
    out = CONVERTERS[fmt](record, source, columns)
    if isinstance(out, Conversation):
        out = validate_conversation(out.with_system(system))
    return out
