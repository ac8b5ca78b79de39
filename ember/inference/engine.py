"""The generation engine behind chat, serve and eval: prompt ids from the training renderer, HF `generate`."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import torch

from ember.data.conversation import Message
from ember.inference.loading import LoadedModel, load_for_inference


@dataclass
class GenerationOptions:
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0
    num_beams: int = 1
    stop: list[str] = field(default_factory=list)
    seed: Optional[int] = None


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"


def as_messages(messages: Sequence[Message | dict]) -> list[Message]:
    return [m if isinstance(m, Message) else Message(m["role"], m.get("content") or "") for m in messages]


class Engine:
    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.renderer = loaded.renderer
        self.default_system = loaded.default_system
        self.lock = threading.Lock()  # one generate at a time on a model (CPU threads are shared anyway)

    @classmethod
    def load(cls, model: str, adapter: Optional[str] = None, dtype: str = "auto") -> "Engine":
        return cls(load_for_inference(model, adapter, dtype))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def with_default_system(self, messages: Sequence[Message | dict]) -> list[Message]:
        """The conversation as training saw it: the run's `data.system` first when it has no system message."""
        messages = as_messages(messages)
        if self.default_system and not any(m.role == "system" for m in messages):
            messages = [Message("system", self.default_system), *messages]
        return messages

    def prompt_ids(self, messages: Sequence[Message | dict], tools=None) -> list[int]:
        return self.renderer.prompt_ids(self.with_default_system(messages), tools)

    def _generate_kwargs(self, options: GenerationOptions) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(
            max_new_tokens=options.max_new_tokens,
            do_sample=options.do_sample,
            num_beams=options.num_beams,
            repetition_penalty=options.repetition_penalty,
            eos_token_id=self.renderer.stop_token_ids or self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if options.do_sample:
            kwargs.update(temperature=options.temperature, top_p=options.top_p, top_k=options.top_k)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if options.stop:
            kwargs.update(stop_strings=list(options.stop), tokenizer=self.tokenizer)
        return kwargs

    def _finish(self, new_ids: list[int], options: GenerationOptions) -> tuple[str, str]:
        stops = set(self.renderer.stop_token_ids)
        finish = "length"
        if new_ids and new_ids[-1] in stops:
            new_ids, finish = new_ids[:-1], "stop"
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        for s in options.stop:
            if s in text:
                text, finish = text[: text.index(s)], "stop"
        if finish == "length":
            from ember.inference.rows import without_unfinished_character

            text = without_unfinished_character(text)
        return text, finish

    def generate_batch(self, conversations: Sequence[Sequence[Message | dict]], options: Optional[GenerationOptions] = None) -> list[Completion]:
        """Left-padded batched generation; each answer is what generating that prompt alone would give (greedy)."""
        options = options or GenerationOptions()
        prompts = [self.prompt_ids(c) for c in conversations]
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        with self.lock, torch.inference_mode():
            if options.seed is not None:
                torch.manual_seed(options.seed)
            out = self.model.generate(input_ids=ids, attention_mask=mask, **self._generate_kwargs(options))
        results = []
        for row, prompt in zip(out, prompts, strict=True):
            new = row[width:].tolist()
            new = _strip_after_stop(new, set(self.renderer.stop_token_ids), pad)
            text, finish = self._finish(new, options)
            results.append(Completion(text, len(prompt), len(new), finish))
        return results

    def generate(self, messages: Sequence[Message | dict], options: Optional[GenerationOptions] = None) -> Completion:
        return self.generate_batch([messages], options)[0]

    def stream(self, messages: Sequence[Message | dict], options: Optional[GenerationOptions] = None,
               cancel: Optional[threading.Event] = None) -> Iterator[str]:
        """Yield text pieces as they are generated; setting `cancel` stops generation at the next token.

        The pieces join to exactly `generate(...).text`: both go through `rows.generate_rows`, which holds back
        text that may still turn into a stop string.
        """
        from ember.inference.rows import Row, generate_rows

        options = options or GenerationOptions()
        if options.num_beams != 1:  # beam search cannot stream: its best row is only known at the end
            yield self.generate(messages, options).text
            return
        pieces: queue.Queue = queue.Queue()
        row = Row(self.prompt_ids(messages), options.max_new_tokens, list(options.stop), on_text=pieces.put,
                  cancel=cancel or threading.Event())
        finished = object()
        failure: list[BaseException] = []

        def run():
            try:
                generate_rows(self, [row], options)
            except BaseException as exc:  # re-raised in the caller's thread
                failure.append(exc)
            finally:
                pieces.put(finished)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        try:
            while (piece := pieces.get()) is not finished:
                yield piece
        finally:
            row.cancel.set()
            worker.join()
        if failure:
            raise failure[0]


def _strip_after_stop(ids: list[int], stops: set[int], pad: int) -> list[int]:
    for i, t in enumerate(ids):
        if t in stops:
            return ids[: i + 1]
    while ids and ids[-1] == pad and pad not in stops:
        ids = ids[:-1]
    return ids


def with_overrides(options: GenerationOptions, **changes: Any) -> GenerationOptions:
    return replace(options, **{k: v for k, v in changes.items() if v is not None})


def load_generate_fn(model: str, adapter: Optional[str] = None, max_new_tokens: int = 256, batch_size: int = 8):
    """A `GenerateFn` for evaluation: a batch of conversations → greedy answers."""
    engine = Engine.load(model, adapter)
    options = GenerationOptions(max_new_tokens=max_new_tokens)

    def generate(conversations: list[list[dict]]) -> list[str]:
        out: list[str] = []
        for begin in range(0, len(conversations), batch_size):
            out += [c.text for c in engine.generate_batch(conversations[begin: begin + batch_size], options)]
        return out

    return generate
