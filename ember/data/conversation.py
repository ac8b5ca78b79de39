"""The one conversation type every reader produces and every consumer (training, chat, eval) takes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from ember.errors import DataError

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Message:
    role: str
    content: str
    train: Optional[bool] = None  # None = decided by the mask mode; False never trains; True always trains
    weight: float = 1.0  # loss weight of this message's tokens when trained
    tool_calls: Optional[list[dict[str, Any]]] = None  # assistant function calls, OpenAI style
    # Encoded image files (PNG, JPEG, ...) of this message, in order: each stands where the content holds an
    # `<image>` marker (ember.data.images.IMAGE_MARKER). None for text; the marker is then plain text.
    images: Optional[list[bytes]] = None

    def to_template(self) -> dict[str, Any]:
        """The dict a Jinja chat template sees."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        return out


@dataclass
class Conversation:
    messages: list[Message]
    source: str = ""  # file:line, for errors and exports
    tools: Optional[list[dict[str, Any]]] = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def system(self) -> Optional[str]:
        return self.messages[0].content if self.messages and self.messages[0].role == "system" else None

    def with_system(self, system: Optional[str]) -> "Conversation":
        """Return a copy with `system` prepended when it has none."""
        if not system or self.system is not None:
            return self
        return Conversation([Message("system", system), *self.messages], self.source, self.tools, dict(self.meta))

    def assistant_indices(self) -> list[int]:
        return [i for i, m in enumerate(self.messages) if m.role == "assistant"]


def validate_conversation(conv: Conversation, require_assistant: bool = True) -> Conversation:
    """Check roles and turn order: [system] then user/tool turns answered by assistant turns.

    Rules: a system message only first; the first non-system message is from the user; an assistant message
    follows a user or tool message (or a previous assistant's tool call); a tool message follows an assistant
    tool call or another tool message; assistant text is non-empty (unless it carries tool calls).
    """
    msgs = conv.messages
    if not msgs:
        raise DataError(conv.source, "messages", "empty conversation: expected at least a user and an assistant turn")
    prev = None
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if m.role not in ROLES:
            raise DataError(conv.source, f"{where}.role", f"unknown role '{m.role}': expected one of {', '.join(ROLES)}")
        if not isinstance(m.content, str):
            raise DataError(conv.source, f"{where}.content", f"expected a string, got {type(m.content).__name__}")
        if m.role == "system":
            if i != 0:
                raise DataError(conv.source, f"{where}.role", "wrong role order: a system message may only come first")
        elif m.role == "user":
            if prev == "user":
                raise DataError(conv.source, f"{where}.role", "wrong role order: two user messages in a row")
        elif m.role == "assistant":
            if prev in (None, "system"):
                raise DataError(conv.source, f"{where}.role", "wrong role order: the conversation starts with an assistant message; expected a user message first")
            if prev == "assistant" and not msgs[i - 1].tool_calls:
                raise DataError(conv.source, f"{where}.role", "wrong role order: two assistant messages in a row")
            if not m.content.strip() and not m.tool_calls:
                raise DataError(conv.source, f"{where}.content", "empty assistant text")
        elif m.role == "tool":
            if prev not in ("assistant", "tool"):
                raise DataError(conv.source, f"{where}.role", "wrong role order: a tool result must follow an assistant turn")
        if m.tool_calls and m.role != "assistant":
            raise DataError(conv.source, f"{where}.tool_calls", f"only assistant messages make tool calls, not "
                                                                f"'{m.role}' messages")
        if not math.isfinite(m.weight) or m.weight < 0:  # NaN passes `< 0`, and would make every gradient NaN
            raise DataError(conv.source, f"{where}.weight", f"loss weight must be a finite number >= 0, got {m.weight}")
        prev = m.role
    if require_assistant and not any(m.role == "assistant" for m in msgs):
        raise DataError(conv.source, "messages", "no assistant message: nothing to train on")
    return conv
