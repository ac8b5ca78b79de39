"""Preference records: a prompt with a chosen and a rejected answer (dpo, orpo, simpo), or a prompt with one answer
labelled desirable or not (kto). Every common file layout converts into these two types:

| format | record |
|---|---|
| `sharegpt` | LLaMA-Factory: `{conversations: [{from, value}, ...], chosen: {from: gpt, value}, rejected: {...}}`; MedicalGPT: the same with `chosen`/`rejected` strings |
| `alpaca` | `{instruction, input?, history?, system?, chosen, rejected}` (LLaMA-Factory's alpaca ranking layout) |
| `pairs` | TRL / UltraFeedback: `{prompt, chosen, rejected}`, each a string or a message list; chosen/rejected may repeat the prompt (full conversations); without `prompt`, the messages chosen and rejected share are the prompt |
| `kto` | `{messages: [..., {role: assistant, ...}], label: true/false}` |

A prompt ends with a user (or tool) message; the answers are the assistant messages after it. Empty answers are not
errors here: the recipe (ember.data.preference_encode) counts and drops them, like identical pairs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

import pyarrow as pa

from ember.data.conversation import Conversation, Message, validate_conversation
from ember.data.formats import SHAREGPT_ROLES, from_alpaca, from_openai, from_sharegpt
from ember.data.store import CONVERSATION_SCHEMA, conversation_row, row_conversation
from ember.errors import DataError


@dataclass
class PreferencePair:
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    source: str = ""
    tools: Optional[list[dict[str, Any]]] = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class KTOExample:
    prompt: list[Message]
    completion: list[Message]
    label: bool
    source: str = ""
    tools: Optional[list[dict[str, Any]]] = None
    meta: dict[str, Any] = field(default_factory=dict)


def is_empty(answer: list[Message]) -> bool:
    """No text and no tool call in any assistant message of an answer."""
    return not any(m.content.strip() or m.tool_calls for m in answer if m.role == "assistant")


# -- detection ----------------------------------------------------------------------------------------------------------
def detect_pair_format(record: dict[str, Any]) -> str:
    keys = set(record)
    if "chosen" in keys and "rejected" in keys:
        if "conversations" in keys:
            return "sharegpt"
        if "instruction" in keys:
            return "alpaca"
        return "pairs"
    if "messages" in keys and "label" in keys:
        raise ValueError("this is KTO data (messages + label): use stage: kto")
    raise ValueError(
        f"cannot detect a preference format from fields {sorted(keys)}: expected conversations/instruction/prompt "
        "with chosen and rejected; set format: in the dataset entry"
    )


def detect_kto_format(record: dict[str, Any]) -> str:
    if "messages" in record and "label" in record:
        return "kto"
    if "chosen" in record and "rejected" in record:
        raise ValueError("this is paired preference data (chosen + rejected): use stage: dpo, orpo or simpo")
    raise ValueError(f"cannot detect KTO data from fields {sorted(record)}: expected messages and label")


# -- conversion ---------------------------------------------------------------------------------------------------------
def _answer(value: Any, source: str, key: str) -> list[Message]:
    """An answer given as a string, one {from, value} / {role, content} message, or a list of messages."""
    if isinstance(value, str):
        return [Message("assistant", value)]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise DataError(source, key, f"expected a string or a list of messages, got {type(value).__name__}")
    if all(isinstance(m, dict) and "from" in m for m in value):
        msgs = []
        for i, m in enumerate(value):
            role = SHAREGPT_ROLES.get(str(m["from"]).lower())
            if role is None or role in ("user", "system"):
                raise DataError(source, f"{key}[{i}].from", f"an answer message comes from gpt/assistant or a tool, "
                                                            f"got '{m['from']}'")
            if not isinstance(m.get("value"), str):
                raise DataError(source, f"{key}[{i}].value", "expected a string")
            msgs.append(Message(role, m["value"]))
        return msgs
    return from_openai({"messages": value}, source, {}).messages


def _messages(value: Any, source: str, key: str) -> list[Message]:
    if isinstance(value, str):
        return [Message("user", value)]
    if not isinstance(value, list):
        raise DataError(source, key, f"expected a string or a list of messages, got {type(value).__name__}")
    return from_openai({"messages": value}, source, {}).messages


def _same(a: Message, b: Message) -> bool:
    return a.role == b.role and a.content == b.content and a.tool_calls == b.tool_calls


def _strip_prompt(prompt: list[Message], answer: list[Message]) -> list[Message]:
    """The full-conversation variant repeats the prompt in the answer: keep what follows it."""
    if len(answer) > len(prompt) and all(_same(p, a) for p, a in zip(prompt, answer)):
        return answer[len(prompt):]
    return answer


def _common_prefix(a: list[Message], b: list[Message]) -> int:
    n = 0
    while n < min(len(a), len(b)) and _same(a[n], b[n]):
        n += 1
    return n


def _pairs(record: dict[str, Any], source: str) -> tuple[list[Message], list[Message], list[Message], Any]:
    chosen, rejected = record.get("chosen"), record.get("rejected")
    if "prompt" in record and record["prompt"] not in (None, ""):
        prompt = _messages(record["prompt"], source, "prompt")
        if isinstance(chosen, list) and isinstance(rejected, list):
            chosen_msgs = _strip_prompt(prompt, _messages(chosen, source, "chosen"))
            rejected_msgs = _strip_prompt(prompt, _messages(rejected, source, "rejected"))
        else:
            chosen_msgs, rejected_msgs = _answer(chosen, source, "chosen"), _answer(rejected, source, "rejected")
    else:  # implicit prompt: the messages both conversations share, up to the last one before a first answer
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            state = "empty" if record.get("prompt") == "" else "missing"
            raise DataError(source, "prompt", f"{state}: without a prompt, chosen and rejected must be full "
                                              "conversations (message lists) that share the prompt")
        c, r = _messages(chosen, source, "chosen"), _messages(rejected, source, "rejected")
        n = _common_prefix(c, r)
        while n and c[n - 1].role == "assistant":
            n -= 1
        prompt, chosen_msgs, rejected_msgs = c[:n], c[n:], r[n:]
    return prompt, chosen_msgs, rejected_msgs, record.get("tools")


def _sharegpt(record: dict[str, Any], source: str) -> tuple[list[Message], list[Message], list[Message], Any]:
    prompt = from_sharegpt({k: record[k] for k in ("conversations", "system", "tools") if k in record}, source, {})
    return (prompt.messages, _answer(record.get("chosen"), source, "chosen"),
            _answer(record.get("rejected"), source, "rejected"), prompt.tools)


def _alpaca(record: dict[str, Any], source: str) -> tuple[list[Message], list[Message], list[Message], Any]:
    prompt = from_alpaca({**{k: v for k, v in record.items() if k not in ("chosen", "rejected")}, "output": ""},
                         source, {})
    return (prompt.messages[:-1], _answer(record.get("chosen"), source, "chosen"),
            _answer(record.get("rejected"), source, "rejected"), None)


_PAIR_READERS = {"sharegpt": _sharegpt, "alpaca": _alpaca, "pairs": _pairs}


def _check(prompt: list[Message], answers: dict[str, list[Message]], source: str, tools) -> None:
    """Turn order of the prompt and of each (non-empty) prompt + answer; the prompt ends where an answer starts."""
    if not prompt:
        raise DataError(source, "prompt", "empty prompt: expected at least a user message")
    validate_conversation(Conversation(list(prompt), source, tools), require_assistant=False)
    if prompt[-1].role not in ("user", "tool"):
        raise DataError(source, "prompt", f"the prompt must end with a user (or tool) message, not "
                                          f"'{prompt[-1].role}': the answers follow it")
    for key, answer in answers.items():
        if not answer or answer[0].role != "assistant":
            raise DataError(source, key, "expected the answer to start with an assistant message")
        if not is_empty(answer):
            validate_conversation(Conversation(list(prompt) + list(answer), source, tools))


def _with_system(prompt: list[Message], system: Optional[str]) -> list[Message]:
    if system and not (prompt and prompt[0].role == "system"):
        return [Message("system", system), *prompt]
    return prompt


def convert_pair(fmt: str, record: dict[str, Any], source: str, system: Optional[str] = None) -> PreferencePair:
    """One record of a paired layout → `PreferencePair`; raises DataError naming the file:line and field."""
    if fmt not in _PAIR_READERS:
        raise DataError(source, None, f"format '{fmt}' holds no preference pairs; use sharegpt, alpaca or pairs")
    for key in ("chosen", "rejected"):
        if key not in record:
            raise DataError(source, key, f"missing required field; the record has {sorted(record)}")
    prompt, chosen, rejected, tools = _PAIR_READERS[fmt](record, source)
    if isinstance(tools, str) and tools.strip():
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as exc:
            raise DataError(source, "tools", f"expected a JSON list of tool schemas: {exc.msg}") from None
    prompt = _with_system(prompt, system)
    _check(prompt, {"chosen": chosen, "rejected": rejected}, source, tools or None)
    meta = {k: record[k] for k in ("prompt_id", "score_chosen", "score_rejected") if k in record}
    return PreferencePair(prompt, chosen, rejected, source, tools or None, meta)


def convert_kto(record: dict[str, Any], source: str, system: Optional[str] = None) -> KTOExample:
    """`{messages, label}` → `KTOExample`: the last assistant message is the answer, what precedes it the prompt."""
    label = record.get("label")
    if not isinstance(label, bool):
        raise DataError(source, "label", f"expected true or false, got {label!r}")
    messages = from_openai({"messages": record.get("messages")}, source, {}).messages
    last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=None)
    if last is None:
        raise DataError(source, "messages", "no assistant message: the last one is the answer KTO rates")
    prompt, completion = _with_system(messages[:last], system), messages[last:]
    if len(completion) > 1:
        raise DataError(source, "messages", "the conversation must end with the rated assistant message")
    _check(prompt, {"messages": completion}, source, record.get("tools"))
    return KTOExample(prompt, completion, label, source, record.get("tools"))


# -- records as Arrow rows --------------------------------------------------------------------------------------------
_MESSAGES = CONVERSATION_SCHEMA.field("messages").type
PAIR_RECORD_SCHEMA = pa.schema([
    ("source", pa.string()), ("prompt", _MESSAGES), ("chosen", _MESSAGES), ("rejected", _MESSAGES),
    ("tools", pa.string()), ("meta", pa.string()),
])
KTO_RECORD_SCHEMA = pa.schema([
    ("source", pa.string()), ("prompt", _MESSAGES), ("completion", _MESSAGES), ("label", pa.bool_()),
    ("tools", pa.string()), ("meta", pa.string()),
])


def _rows(messages: list[Message]) -> list[dict[str, Any]]:
    return conversation_row(Conversation(messages))["messages"]


def _messages_of(rows: list[dict[str, Any]]) -> list[Message]:
    return row_conversation({"messages": rows, "source": "", "tools": None, "meta": "{}"}).messages


def pair_row(pair: PreferencePair) -> dict[str, Any]:
    return {"source": pair.source, "prompt": _rows(pair.prompt), "chosen": _rows(pair.chosen),
            "rejected": _rows(pair.rejected),
            "tools": json.dumps(pair.tools, ensure_ascii=False) if pair.tools is not None else None,
            "meta": json.dumps(pair.meta, ensure_ascii=False, default=str)}


def row_pair(row: dict[str, Any]) -> PreferencePair:
    return PreferencePair(_messages_of(row["prompt"]), _messages_of(row["chosen"]), _messages_of(row["rejected"]),
                          row["source"], json.loads(row["tools"]) if row["tools"] is not None else None,
                          json.loads(row["meta"]))


def kto_row(example: KTOExample) -> dict[str, Any]:
    return {"source": example.source, "prompt": _rows(example.prompt), "completion": _rows(example.completion),
            "label": example.label,
            "tools": json.dumps(example.tools, ensure_ascii=False) if example.tools is not None else None,
            "meta": json.dumps(example.meta, ensure_ascii=False, default=str)}


def row_kto(row: dict[str, Any]) -> KTOExample:
    return KTOExample(_messages_of(row["prompt"]), _messages_of(row["completion"]), row["label"], row["source"],
                      json.loads(row["tools"]) if row["tools"] is not None else None, json.loads(row["meta"]))
