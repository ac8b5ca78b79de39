"""The generation engine behind chat, serve and eval: prompt ids from the training renderer, one decoding loop.

Greedy and sampled generation go through `ember.inference.decoder` (batch and stream are two views of it); beam
search, which keeps several candidates per row, is a thin call to transformers' `generate`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any, Optional

import torch

from ember.data.conversation import Message
from ember.inference.completion import (Completion, GenerationOptions, PromptImages, Row, first_stop,
                                       without_unfinished_character)
from ember.inference.decoder import Decoder, run_rows
from ember.errors import ConfigError
from ember.inference.loading import LoadedModel, load_for_inference

__all__ = ["Completion", "Engine", "GenerationOptions", "as_messages", "load_generate_fn", "with_overrides"]


def as_messages(messages: Sequence[Message | dict]) -> list[Message]:
    """`Message`s from dicts with role and content (and `images`: encoded image files, one per `<image>` marker;
    `tool_calls`: an assistant turn's calls in ember.data.tools' shape)."""
    return [m if isinstance(m, Message) else Message(m["role"], m.get("content") or "", images=m.get("images") or None,
                                                     tool_calls=m.get("tool_calls") or None)
            for m in messages]


class Engine:
    def __init__(self, loaded: LoadedModel):
        if loaded.renderer is None:
            raise ConfigError(f"{loaded.name}: the tokenizer has no chat template, so there is no way to build a chat "
                              "prompt; train with data.template set (see `ember templates`) or use a chat model")
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

    def prompt(self, messages: Sequence[Message | dict], tools=None) -> tuple[list[int], Optional[PromptImages]]:
        """The prompt ids (`prompt_ids`) and, when the messages hold images, what their prefill needs."""
        msgs = self.with_default_system(messages)
        ids = self.prompt_ids(msgs, tools)
        images = [image for m in msgs for image in (m.images or ())]
        return ids, (self.prompt_images(ids, images) if images else None)

    def prompt_images(self, ids: list[int], images: Sequence[bytes]) -> PromptImages:
        """The processor's pixel inputs for `images`, and M-RoPE positions for models that place them in 2D."""
        from ember.inference.vision import prompt_images

        return prompt_images(self.model, self.renderer, ids, images)

    def fit_history(self, messages: Sequence[Message | dict], max_tokens: Optional[int]) -> list[Message]:
        """The conversation with its oldest whole rounds dropped until the prompt is at most `max_tokens` (the system
        message and the last round stay). Chat, the web page and `ember eval gen` cut histories this one way."""
        msgs = as_messages(messages)
        if max_tokens is None:
            return msgs
        head = msgs[:1] if msgs and msgs[0].role == "system" else []
        body = msgs[len(head):]
        starts = [i for i, m in enumerate(body) if m.role == "user"] or [0]
        for start in starts:
            kept = head + body[start:]
            if start == starts[-1] or len(self.prompt_ids(kept)) <= max_tokens:
                return kept
        return msgs

    @property
    def stop_ids(self) -> set[int]:
        """Token ids that end an answer: the template's stop tokens, else the tokenizer's EOS."""
        if self.renderer.stop_token_ids:
            return set(self.renderer.stop_token_ids)
        eos = self.tokenizer.eos_token_id
        return set() if eos is None else ({int(eos)} if isinstance(eos, int) else set(eos))

    def decoder(self, prefill_chunk: int = 512) -> Decoder:
        """A fresh running batch over this model (the caller holds `self.lock` while stepping it)."""
        return Decoder(self.model, self.tokenizer, self.stop_ids, prefill_chunk)

    def generate_rows(self, rows: Sequence[Row], options: Optional[GenerationOptions] = None) -> list[Completion]:
        """Generate `rows` together (each with its own prompt, limit, stop strings, stream and cancel event).

        Args:
            rows: the sequences; a row's `options` wins over `options`.
            options: sampling settings for rows without their own (num_beams must be 1).

        Returns:
            One `Completion` per row, in order: each equals what generating that row alone gives (greedy).

        Raises:
            ValueError: `num_beams` is not 1 (beam search cannot stream; use `generate_batch`).
        """
        options = options or GenerationOptions()
        if any((r.options or options).num_beams != 1 for r in rows):
            raise ValueError("streaming rows need num_beams=1 (beam search keeps several candidates per row)")
        with self.lock:
            return run_rows(self.decoder(), rows, options)

    def generate_batch(self, conversations: Sequence[Sequence[Message | dict]],
                       options: Optional[GenerationOptions] = None, tools=None) -> list[Completion]:
        """Answer each conversation; each answer is what generating that conversation alone would give (greedy).

        Args:
            conversations: message lists (dicts or `Message`); the run's default system prompt is added.
            options: generation settings (default: greedy, 256 new tokens).
            tools: tool schemas (ember.data.tools' shape) every prompt shows; read calls back with
                `ember.data.tools.parse_tool_calls`.

        Returns:
            One `Completion` per conversation (text without the stop token, cut at the first stop string).
        """
        options = options or GenerationOptions()
        prompts = [self.prompt(c, tools) for c in conversations]
        if options.num_beams != 1:
            if any(images for _, images in prompts):
                raise ValueError("beam search does not take images: use num_beams=1")
            return self._beam_search([ids for ids, _ in prompts], options)
        return self.generate_rows([Row(ids, options.max_new_tokens, list(options.stop), images=images)
                                   for ids, images in prompts], options)

    def generate(self, messages: Sequence[Message | dict], options: Optional[GenerationOptions] = None,
                 tools=None) -> Completion:
        """Answer one conversation.

        Args:
            messages: the history (dicts with role/content or `Message`), rendered as training rendered it.
            options: generation settings (default: greedy, 256 new tokens).
            tools: tool schemas the prompt shows (as `generate_batch`).

        Returns:
            The `Completion`: text (stop token dropped, cut at the first stop string), token counts, finish reason.
        """
        return self.generate_batch([messages], options, tools)[0]

    def stream(self, messages: Sequence[Message | dict], options: Optional[GenerationOptions] = None,
               cancel: Optional[threading.Event] = None, tools=None) -> Iterator[str]:
        """Yield text pieces as they are generated; setting `cancel` stops generation at the next token.

        The pieces join to exactly `generate(...).text`: both are the same decoding loop, whose rows hold back
        text that may still turn into a stop string.
        """
        options = options or GenerationOptions()
        if options.num_beams != 1:  # beam search cannot stream: its best row is only known at the end
            yield self.generate(messages, options, tools).text
            return
        pieces: queue.Queue = queue.Queue()
        ids, images = self.prompt(messages, tools)
        row = Row(ids, options.max_new_tokens, list(options.stop), on_text=pieces.put,
                  cancel=cancel or threading.Event(), images=images)
        finished = object()
        failure: list[BaseException] = []

        def run():
            try:
                self.generate_rows([row], options)
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

    def _beam_search(self, prompts: list[list[int]], options: GenerationOptions) -> list[Completion]:
        """Beam search through transformers' `generate` (left-padded batch, stop strings checked by it)."""
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        stops = self.stop_ids
        kwargs: dict[str, Any] = dict(max_new_tokens=options.max_new_tokens, do_sample=False,
                                      num_beams=options.num_beams, repetition_penalty=options.repetition_penalty,
                                      eos_token_id=sorted(stops) or None, pad_token_id=pad, temperature=None,
                                      top_p=None, top_k=None)
        if options.stop:
            kwargs.update(stop_strings=list(options.stop), tokenizer=self.tokenizer)
        with self.lock, torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        results = []
        for row, prompt in zip(out, prompts, strict=True):
            new = _strip_after_stop(row[width:].tolist(), stops, pad)
            finish = "length"
            if new and new[-1] in stops:
                text_ids, finish = new[:-1], "stop"
            else:
                text_ids = new
            text = self.tokenizer.decode(text_ids, skip_special_tokens=True)
            cut = first_stop(text, options.stop)
            if cut is not None:
                text, finish = text[:cut], "stop"
            if finish == "length":
                text = without_unfinished_character(text)
            results.append(Completion(text, len(prompt), len(new), finish))
        return results


def _strip_after_stop(ids: list[int], stops: set[int], pad: int) -> list[int]:
    for i, t in enumerate(ids):
        if t in stops:
            return ids[: i + 1]
    while ids and ids[-1] == pad and pad not in stops:
        ids = ids[:-1]
    return ids


def with_overrides(options: GenerationOptions, **changes: Any) -> GenerationOptions:
    return replace(options, **{k: v for k, v in changes.items() if v is not None})


def load_generate_fn(model: str, adapter: Optional[str] = None, max_new_tokens: int = 256, batch_size: int = 8,
                     history_max_tokens: Optional[int] = None):
    """A `GenerateFn` for evaluation: a batch of conversations → greedy answers; histories longer than
    `history_max_tokens` lose their oldest rounds first, as in `ember chat`."""
    engine = Engine.load(model, adapter)
    options = GenerationOptions(max_new_tokens=max_new_tokens)

    def generate(conversations: list[list[dict]]) -> list[str]:
        out: list[str] = []
        fitted = [engine.fit_history(c, history_max_tokens) for c in conversations]
        for begin in range(0, len(fitted), batch_size):
            out += [c.text for c in engine.generate_batch(fitted[begin: begin + batch_size], options)]
        return out

    return generate
