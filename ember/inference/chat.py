"""Multi-turn chat session: history kept as messages, cut to a token budget by dropping the oldest whole turns."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Optional

from ember.data.conversation import Message
from ember.inference.completion import GenerationOptions
from ember.inference.engine import Engine


@dataclass
class ChatSession:
    engine: Engine
    options: GenerationOptions
    system: Optional[str] = None
    history_max_tokens: int = 2048
    history: list[Message] = field(default_factory=list)

    def messages(self, user_text: str) -> list[Message]:
        """System + as many recent whole (user, assistant) turns as fit the budget + the new user message."""
        head = [Message("system", self.system)] if self.system else []
        return self.engine.fit_history(head + self.history + [Message("user", user_text)], self.history_max_tokens)

    def ask(self, user_text: str, stream: bool = True) -> Iterator[str]:
        msgs = self.messages(user_text)
        pieces: list[str] = []
        if stream:
            for piece in self.engine.stream(msgs, self.options):
                pieces.append(piece)
                yield piece
        else:
            text = self.engine.generate(msgs, self.options).text
            pieces.append(text)
            yield text
        self.history += [Message("user", user_text), Message("assistant", "".join(pieces).strip())]

    def clear(self) -> None:
        self.history = []


def run_chat(session: ChatSession, lines: Iterator[str], out: Optional[IO[str]] = None, interactive: bool = True,
             show_prompt: bool = False) -> None:
    """Read user lines (a terminal or piped stdin); `/clear`, `/system TEXT`, `/exit` are commands."""
    out = out or sys.stdout  # looked up per call: a default bound at import would bypass redirected stdout
    if interactive:
        print("Ember chat — /clear resets history, /system TEXT sets the system prompt, /exit quits.", file=out)
        if session.engine.default_system and not session.system:
            print(f"(system prompt from training: {session.engine.default_system!r})", file=out)
    for raw in lines:
        line = raw.rstrip("\n")
        if not line.strip():
            continue
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/clear":
            session.clear()
            print("(history cleared)", file=out)
            continue
        if line.startswith("/system"):
            session.system = line[len("/system"):].strip() or None
            session.clear()
            print(f"(system prompt set: {session.system!r})", file=out)
            continue
        if show_prompt:
            print_prompt(session, line, out)
        if interactive:
            print("assistant: ", end="", file=out, flush=True)
        for piece in session.ask(line, stream=True):
            print(piece, end="", file=out, flush=True)
        print(file=out, flush=True)


def print_prompt(session: ChatSession, user_text: str, out: IO[str]) -> None:
    msgs = session.engine.with_default_system(session.messages(user_text))
    text = session.engine.renderer.prompt_text(msgs)
    ids = session.engine.prompt_ids(msgs)
    print(f"----- prompt ({len(ids)} tokens) -----\n{text}\n----- end of prompt -----", file=out)
