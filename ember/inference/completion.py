"""What one generated sequence asks for and how it ends: options, the row being generated, stop handling, results.

Every generation path shares this module: the decoding loop (its batch and stream views), beam search, chat,
serve and eval. A `Row` is one sequence: its prompt ids, its options and its token limit. The decoding loop hands
it one token at a time (`Row.accept`); the row turns its ids into text, cuts it at the first stop string, decides
whether it is finished, and passes the text that can no longer change to its `on_text` callback. Stop strings are
checked on text, so a stop string split over several tokens is never half-streamed: text that could still become
a stop string is held back until it cannot. The pieces a row streams join to exactly its final text.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

INCOMPLETE = "\ufffd"  # what decoding shows for a character whose UTF-8 bytes have not all arrived yet
MIN_TEMPERATURE = 0.01  # below this (but above 0) float32 sampling overflows; 0 means greedy
MAX_NEW_TOKENS = 2**31 - 1  # far above any context length, and exact as a JSON number


@dataclass
class GenerationOptions:
    """How to pick tokens. Greedy unless `do_sample`; `temperature`, `top_p` and `top_k` apply only when sampling.

    `seed` makes sampling repeatable: each row draws from its own generator, so other rows in the same batch
    never change what a seeded row gets. `presence_penalty`/`frequency_penalty` lower the logits of tokens already
    generated (OpenAI's definition); `repetition_penalty` is transformers' (prompt and answer, divides). `logit_bias`
    adds to chosen token logits; `top_logprobs` asks for that many alternatives per token (0 = only the chosen
    token's log-probability).
    """

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0
    num_beams: int = 1
    stop: list[str] = field(default_factory=list)
    seed: Optional[int] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    top_logprobs: Optional[int] = None  # None: no log-probabilities


@dataclass(frozen=True)
class Range:
    """The values one generation option accepts. One source for every front end: serve's request schema declares
    it (`Field(**vars(range))`), and the flags of chat, serve and webui are checked against it (`option_problem`),
    so a value one of them refuses the others refuse too."""

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None

    def __contains__(self, value: float) -> bool:
        # Each bound is a positive test, so NaN lies outside every range.
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le))

    def __str__(self) -> str:
        bounds = [f"{words} {bound}" for words, bound in (("of at least", self.ge), ("above", self.gt),
                                                          ("at most", self.le)) if bound is not None]
        return " and ".join(bounds)


# OpenAI's ranges where its API has the option (temperature, top_p, the penalties); the others keep the arithmetic
# sound (no beams is no answer; a penalty of 0 divides by zero).
RANGES = {
    "max_new_tokens": Range(ge=1, le=MAX_NEW_TOKENS),
    "temperature": Range(ge=0, le=2),
    "top_p": Range(gt=0, le=1),
    "repetition_penalty": Range(gt=0),
    "num_beams": Range(ge=1),
    "presence_penalty": Range(ge=-2, le=2),
    "frequency_penalty": Range(ge=-2, le=2),
}


def option_problem(name: str, value: Any) -> Optional[str]:
    """Why `value` is refused for the generation option `name`, as the end of a sentence that starts with the
    option and its value ("is out of range: ..."); None when it is accepted (or unset)."""
    allowed = RANGES.get(name)
    if value is None or allowed is None:
        return None
    if value not in allowed:
        return f"is out of range: use a value {allowed}"
    if name == "temperature" and 0 < value < MIN_TEMPERATURE:
        return (f"is too small to sample with: use 0 for greedy decoding or a value from {MIN_TEMPERATURE} to "
                f"{allowed.le}")
    return None


@dataclass
class TokenLogprob:
    """One generated token: its id, text, log-probability under the model, and the most likely alternatives."""

    id: int
    text: str
    logprob: float
    top: list[tuple[int, str, float]] = field(default_factory=list)


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop", "length" or "cancelled"
    logprobs: Optional[list[TokenLogprob]] = None  # set when the options asked for log-probabilities


@dataclass
class PromptImages:
    """What a prompt with images adds to its prefill: the pixel inputs (the model's processor made them), and, for
    models that place image tokens in 2D (Qwen2-VL's M-RoPE), the prompt's position ids and the offset every later
    position carries."""

    tensors: dict[str, Any]
    positions: Any = None  # None: positions count the prompt's tokens
    offset: int = 0


@dataclass
class Row:
    """One sequence to generate. `limit` is this row's max_new_tokens; `stop` its stop strings; `options` its
    sampling settings (None: the options of the call that runs it)."""

    prompt: list[int]
    limit: int
    stop: Sequence[str] = ()
    on_text: Optional[Callable[[str], None]] = None
    cancel: threading.Event = field(default_factory=threading.Event)
    options: Optional[GenerationOptions] = None
    on_logprobs: Optional[Callable[[list[TokenLogprob]], None]] = None  # streamed with the text they belong to
    images: Optional[PromptImages] = None  # the prompt's images (an image-text model), prefilled in one piece
    ids: list[int] = field(default_factory=list)
    generated: int = 0  # tokens produced, the stop token included
    emitted: str = ""
    text: str = ""
    finish_reason: Optional[str] = None  # "stop", "length" or "cancelled"
    logprobs: Optional[list[TokenLogprob]] = None  # a list when the options ask for log-probabilities
    _ends: list[int] = field(default_factory=list)  # text length after each generated token (for logprobs)
    _sent: int = 0  # logprob entries already streamed

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def accept(self, token: int, stop_ids: set[int], tokenizer: Any, logprob: Optional[TokenLogprob] = None) -> None:
        """Take the next generated token; decide whether the row is finished; stream what is now final."""
        if self.cancel.is_set():
            self.finish_reason = "cancelled"
            return
        self.generated += 1
        if token in stop_ids:
            self.finish_reason = "stop"
            return
        self.ids.append(token)
        self.text = tokenizer.decode(self.ids, skip_special_tokens=True)
        if logprob is not None and self.logprobs is not None:
            self.logprobs.append(logprob)
            self._ends.append(len(self.text))
        cut = first_stop(self.text, self.stop)
        if cut is not None:
            self.text = self.text[:cut]
            self.finish_reason = "stop"
        elif self.generated >= self.limit:
            self.finish_reason = "length"
        if not self.done:
            self._emit(self.text[: len(self.text) - held_back(self.text, self.stop)])

    def cancelled(self) -> None:
        self.finish_reason = "cancelled"

    def finish(self) -> Completion:
        """The row's result once generation ended (a row still open ran out of tokens: "length")."""
        if self.finish_reason is None:
            self.finish_reason = "length"
        if self.finish_reason == "length":
            self.text = without_unfinished_character(self.text)
        if self.logprobs is not None:  # tokens whose text lies past a stop-string cut are not part of the answer
            n = len(self.text)
            keep = 0 if n == 0 else next((i + 1 for i, e in enumerate(self._ends) if e >= n), len(self._ends))
            del self.logprobs[keep:]
        if self.finish_reason != "cancelled":
            self._emit(self.text, final=True)
        return Completion(self.text, len(self.prompt), self.generated, self.finish_reason, self.logprobs)

    def _emit(self, upto: str, final: bool = False) -> None:
        """Stream the text up to `upto` (and, first, the logprob entries of the tokens it completes)."""
        piece = ""
        if len(upto) > len(self.emitted) and upto.startswith(self.emitted):
            piece, self.emitted = upto[len(self.emitted):], upto
        elif not final:
            return
        released = self._release(len(self.emitted), final)
        if released and self.on_logprobs is not None:
            self.on_logprobs(released)
        if piece and self.on_text is not None:
            self.on_text(piece)

    def _release(self, upto: int, final: bool) -> list[TokenLogprob]:
        """Logprob entries of the tokens whose text is now all streamed (all of them at the end)."""
        if self.logprobs is None:
            return []
        end = len(self.logprobs) if final else sum(1 for e in self._ends if e <= upto)
        out, self._sent = self.logprobs[self._sent: end], max(self._sent, end)
        return out


def without_unfinished_character(text: str) -> str:
    """A length limit can fall inside a multi-byte character: drop its bytes rather than show U+FFFD."""
    return text.rstrip(INCOMPLETE)


def first_stop(text: str, stops: Sequence[str]) -> Optional[int]:
    hits = [text.index(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters must wait: an unfinished character, or the start of a stop string."""
    keep = 0
    if text.endswith(INCOMPLETE):
        keep = len(text) - len(text.rstrip(INCOMPLETE))
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                keep = max(keep, k)
                break
    return keep
