"""Multi-turn chat session: history kept as messages, cut to a token budget by dropping the oldest whole turns.

Images (an image-text model) join the next user message: `ChatSession.attach` (`ember chat --image PATH`, or the
`/image PATH` command) queues them, and that message carries them for the rest of the conversation."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Optional

from ember.data.conversation import Message
from ember.data.images import IMAGE_MARKER, count_markers
from ember.data.tools import CallStream, call_json, parse_tool_calls
from ember.inference.completion import GenerationOptions
from ember.inference.engine import Engine


@dataclass
class ChatSession:
    engine: Engine
    options: GenerationOptions
    system: Optional[str] = None
    history_max_tokens: int = 2048
    history: list[Message] = field(default_factory=list)
    pending_images: list[bytes] = field(default_factory=list)  # for the next user message
    # tool schemas (`ember chat --tools FILE`): the model may answer with calls, which are shown and kept; the
    # results are given back with `/tool RESULT` (`tool_result`)
    tools: Optional[list[dict]] = None
    last_calls: list[dict] = field(default_factory=list)  # the calls of the last answer
    awaiting: int = 0  # how many of them still wait for a result

    def attach(self, image: bytes) -> None:
        """Give the next user message this image (encoded file bytes)."""
        self.pending_images.append(image)

    def user_message(self, user_text: str) -> Message:
        """The next user message: its text with one `<image>` marker per attached image (placed first unless the
        text already holds exactly that many)."""
        images = list(self.pending_images)
        if images and count_markers(user_text) != len(images):
            user_text = IMAGE_MARKER * len(images) + user_text
        return Message("user", user_text, images=images or None)

    def messages(self, user_text: str) -> list[Message]:
        """System + as many recent whole (user, assistant) turns as fit the budget + the new user message."""
        head = [Message("system", self.system)] if self.system else []
        return self.engine.fit_history(head + self.history + [self.user_message(user_text)], self.history_max_tokens)

    def ask(self, user_text: str, stream: bool = True) -> Iterator[str]:
        msgs = self.messages(user_text)
        asked = msgs[-1]
        self.pending_images = []
        yield from self._answer(msgs, [asked], stream)

    def tool_result(self, result: str, stream: bool = True) -> Optional[Iterator[str]]:
        """Give the next of the last answer's calls its result (a tool turn). Once every call has one, the model's
        next answer (streamed); None while results are still missing."""
        self.history.append(Message("tool", result))
        self.awaiting = max(0, self.awaiting - 1)
        if self.awaiting:
            return None
        head = [Message("system", self.system)] if self.system else []
        msgs = self.engine.fit_history(head + self.history, self.history_max_tokens)
        return self._answer(msgs, [], stream)

    def _answer(self, msgs: list[Message], asked: list[Message], stream: bool) -> Iterator[str]:
        """Stream the answer to `msgs`; with tools, a call is held back (`last_calls` gets it) and only text shows."""
        reader = CallStream() if self.tools else None
        pieces: list[str] = []
        answers = (self.engine.stream(msgs, self.options, tools=self.tools) if stream
                   else iter([self.engine.generate(msgs, self.options, tools=self.tools).text]))
        for piece in answers:
            pieces.append(piece)
            shown = reader.feed(piece) if reader else piece
            if shown:
                yield shown
        text, calls = "".join(pieces), []
        if reader:
            rest, calls = reader.finish()
            if rest:
                yield rest
            text = parse_tool_calls(text).content if calls else text
        self.last_calls, self.awaiting = calls, len(calls)
        self.history += [*asked, Message("assistant", text.strip(), tool_calls=calls or None)]

    def clear(self) -> None:
        self.history = []


def run_chat(session: ChatSession, lines: Iterator[str], out: Optional[IO[str]] = None, interactive: bool = True,
             show_prompt: bool = False) -> None:
    """Read user lines (a terminal or piped stdin); `/clear`, `/system TEXT`, `/image PATH`, `/exit` are commands."""
    out = out or sys.stdout  # looked up per call: a default bound at import would bypass redirected stdout
    if interactive:
        print("Ember chat — /clear resets history, /system TEXT sets the system prompt, /image PATH attaches an "
              "image, /exit quits.", file=out)
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
        if line.startswith("/image "):
            from pathlib import Path

            from ember.data.images import read_image
            from ember.errors import DataError

            try:
                session.attach(read_image(line[len("/image "):].strip(), Path.cwd(), "/image", "PATH"))
                print(f"(image attached to your next message: {len(session.pending_images)} waiting)", file=out)
            except DataError as exc:
                print(f"({exc})", file=out)
            continue
        if line.startswith("/system"):
            session.system = line[len("/system"):].strip() or None
            session.clear()
            print(f"(system prompt set: {session.system!r})", file=out)
            continue
        if line.startswith("/tool ") and session.tools:
            answer = session.tool_result(line[len("/tool "):].strip())
            if answer is None:
                print(f"(result kept; {session.awaiting} more to give)", file=out)
                continue
        else:
            if show_prompt:
                print_prompt(session, line, out)
            answer = session.ask(line, stream=True)
        if interactive:
            print("assistant: ", end="", file=out, flush=True)
        shown = False
        for piece in answer:
            print(piece, end="", file=out, flush=True)
            shown = True
        if shown or interactive:  # an answer that is only calls shows just their lines
            print(file=out, flush=True)
        print_calls(session.last_calls, out, interactive)


def print_calls(calls: list[dict], out: IO[str], interactive: bool) -> None:
    """One line per call the answer made (the JSON the model wrote); `/tool RESULT` answers them."""
    for call in calls:
        print(f"[tool call] {call_json(call)}", file=out)
    if calls and interactive:
        print("(give each call's result with /tool RESULT, in order)", file=out)


def print_prompt(session: ChatSession, user_text: str, out: IO[str]) -> None:
    msgs = session.engine.with_default_system(session.messages(user_text))
    text = session.engine.renderer.prompt_text(msgs, session.tools)
    ids = session.engine.prompt_ids(msgs, session.tools)
    print(f"----- prompt ({len(ids)} tokens) -----\n{text}\n----- end of prompt -----", file=out)
