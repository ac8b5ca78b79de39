"""The one renderer: a conversation → (input_ids, labels) for training, and → prompt ids for generation.

An answer's supervised span is the text added between "everything before assistant turn k, plus the generation
prompt" and "everything through turn k". A template whose earlier text changes when a turn is appended is not
prefix-stable: we raise rather than mislabel. `ember.data.layout` finds those spans from one extra rendering per
conversation (linear time); `exact_spans` renders the prefixes themselves and is the reference it is checked against.

Images: for a model that reads them, `Renderer.images` (ember.data.vision.ImageTokens) is set. A message's `<image>`
markers then render as the model's image text (e.g. `<|vision_start|><|image_pad|><|vision_end|>`), which is
tokenised as the special tokens it is (the rest of the content stays data), and each image token is expanded into
the tokens the model's processor gives that image — never trained, in training and in prompts alike.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from ember.data.conversation import Conversation, Message
from ember.data.images import IMAGE_MARKER
from ember.data.layout import AUDITED_ANSWERS, SpanLayout, build_skeleton, log as layout_log, sentinel
from ember.data.tokenize import EncodingOffsets, first_token_from, holds_added_token, tokenize_with_offsets
from ember.data.tools import calls_text, result_text, tools_text
from ember.errors import ConfigError, DataError

IGNORE_INDEX = -100
_SENTINEL = re.compile("\ue000(\\d+)\ue001")
_END_OF_TURN_HINT = re.compile(r"end|eot|eos|</s>|<eoa>|<eom>", re.IGNORECASE)


class TemplateError(ConfigError):
    """The chat template cannot be used to build labels safely."""


class RenderError(TemplateError):
    """The chat template failed on one conversation (a Jinja `raise_exception`, a value it cannot take): in
    training, that record's error (ember.data.recipes)."""


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    source: str = ""
    weights: Optional[list[float]] = None
    turns_dropped: int = 0
    truncated: bool = False
    warnings: list[str] = field(default_factory=list)
    # (message index, first token, end token) of every assistant answer's span; truncation cuts at these boundaries
    answers: Optional[list[tuple[int, int, int]]] = field(default=None, repr=False, compare=False)
    images: Optional[list[bytes]] = field(default=None, repr=False)  # the sample's images, in token order
    # The rendered text and each token's character span, kept on a whole conversation's encoding so truncation can
    # cut windows out of it (ember.data.truncation); never stored with the samples.
    text: Optional[str] = field(default=None, repr=False, compare=False)
    offsets: Optional[Sequence[tuple[int, int]]] = field(default=None, repr=False, compare=False)

    @functools.cached_property
    def trained_tokens(self) -> int:
        # Counted once: a sample is asked several times on its way to the cache, and its labels are final once
        # built (only `Renderer._label` writes them, before anyone asks).
        return len(self.labels) - self.labels.count(IGNORE_INDEX)


class Renderer:
    """Applies one chat template with one tokenizer. `template=None` uses the tokenizer's own chat template."""

    def __init__(self, tokenizer, template=None):
        self.tokenizer = tokenizer
        if template is None:
            source = tokenizer.chat_template
            if not source:
                raise ConfigError(
                    "the tokenizer has no chat template of its own: set data.template to a shipped template "
                    "(see `ember templates`) or a .jinja file"
                )
            if isinstance(source, dict):  # tokenizers with several named templates
                source = source.get("default") or next(iter(source.values()))
            self.name, self.source, stop = "auto", source, self._guess_stop_strings(source)
        else:
            self.name, self.source = template.name, template.source
            stop = list(template.stop_strings(tokenizer))
        self.stop_strings = [s for s in dict.fromkeys(stop) if s]
        self.stop_token_ids = self._stop_ids(self.stop_strings)
        self._tools_native = "tool_calls" in self.source
        self._tool_role_native = "'tool'" in self.source or '"tool"' in self.source
        self._tool_list_native = re.search(r"\btools\b", self.source) is not None
        self.layout = SpanLayout()
        self.render_calls = 0  # template renders so far (tests pin the per-conversation cost with it)
        # Tokens the template puts before the first round, by system prompt and tools: truncation's estimate of
        # where round 0 starts (ember.data.truncation; an estimate only, every sample it picks is proven or encoded).
        self.system_block_tokens: dict[tuple, int] = {}
        self.images: Any = None  # ember.data.vision.ImageTokens for a model that reads images

    # -- identity ---------------------------------------------------------------------------------------------
    @property
    def identity(self) -> dict[str, Any]:
        """What a checkpoint records so chat/serve/eval render exactly like training."""
        return {
            "name": self.name,
            "sha256": hashlib.sha256(self.source.encode("utf-8")).hexdigest(),
            "stop_strings": self.stop_strings,
            "stop_token_ids": self.stop_token_ids,
        }

    def _guess_stop_strings(self, source: str) -> list[str]:
        stops = [self.tokenizer.eos_token] if self.tokenizer.eos_token else []
        for token in self.tokenizer.get_added_vocab():
            if token in source and _END_OF_TURN_HINT.search(token):
                stops.append(token)
        return stops

    def _stop_ids(self, strings: Sequence[str]) -> list[int]:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:  # a lookup per string: building the whole vocabulary dict costs more than this
            ids = [i for i in map(backend.token_to_id, strings) if i is not None]
        else:
            vocab = self.tokenizer.get_vocab()
            ids = [vocab[s] for s in strings if s in vocab]
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token in strings:
            ids.append(self.tokenizer.eos_token_id)
        return list(dict.fromkeys(ids))

    # -- text -------------------------------------------------------------------------------------------------
    def template_messages(self, messages: Sequence[Message], tools=None) -> list[dict[str, Any]]:
        """Messages as the template sees them. What the template cannot take becomes text in the one tool format
        (`ember.data.tools`): calls are `<tool_call>` blocks after the assistant's text, results a user turn in
        `<tool_response>`, and the tool list joins the system message (one is put first when there is none)."""
        out = []
        for m in messages:
            d = m.to_template()
            if m.images:
                d["content"] = self._content(m)
            if m.tool_calls and not self._tools_native:
                text = calls_text(m.tool_calls)
                d = {"role": "assistant", "content": (d["content"] + "\n" if d["content"] else "") + text}
            if m.role == "tool" and not self._tool_role_native:
                d = {"role": "user", "content": result_text(d["content"])}
            out.append(d)
        if tools and not self._tool_list_native:
            if out and out[0]["role"] == "system":
                out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + tools_text(tools)}
            else:
                out.insert(0, {"role": "system", "content": tools_text(tools)})
        return out

    def _content(self, m: Message) -> str:
        """The message's text as the template receives it: its image markers become the model's image text."""
        if not m.images:
            return m.content
        if self.images is None:
            raise ConfigError("a message holds images but this model reads none: use an image-text model "
                              "(docs/multimodal.md) or drop the images")
        return m.content.replace(IMAGE_MARKER, self.images.image_text)

    def _data_contents(self, messages: Sequence[Message]) -> list[str]:
        """The text of each message that must stay data (image markers are not: they become image tokens)."""
        return [m.content.replace(IMAGE_MARKER, "") if m.images else m.content for m in messages]

    def render_text(self, messages: Sequence[Message], add_generation_prompt: bool = False, tools=None) -> str:
        return self._render(self.template_messages(messages, tools), add_generation_prompt, tools)

    @functools.cached_property
    def hard_split_ids(self) -> frozenset[int]:
        """Added tokens the tokenizer always splits at, whatever text surrounds them: matched before normalisation,
        no lstrip (which would take the whitespace before them), and no added token holds their first character
        anywhere but at its start (so no match can begin earlier and straddle them). Text on either side of such a
        token is tokenised on its own, which lets truncation cut a conversation's encoding there instead of
        encoding the cut text again."""
        added = getattr(self.tokenizer, "added_tokens_decoder", {}) or {}
        inner = {ch for t in added.values() for ch in t.content[1:]}
        return frozenset(i for i, t in added.items()
                         if t.content and not (t.lstrip or t.normalized or t.single_word) and t.content[0] not in inner)

    @functools.cached_property
    def tool_call_format(self) -> Optional[str]:
        """"hermes" when answers carry calls as `<tool_call>` JSON blocks — the form `parse_tool_calls` reads: always
        for a template without tool support (Ember writes that text), and for one with it when a probe call
        renders so — else None (the template has its own call format, which Ember cannot read back)."""
        if not self._tools_native:
            return "hermes"
        call = {"type": "function", "function": {"name": "probe_function", "arguments": {"x": 1}}}
        try:
            text = self.render_text([Message("user", "?"), Message("assistant", "", tool_calls=[call])])
        except TemplateError:
            return None
        return "hermes" if calls_text([call]) in text else None

    def _render(self, template_messages: list[dict[str, Any]], add_generation_prompt: bool = False, tools=None) -> str:
        self.render_calls += 1
        try:
            return self.tokenizer.apply_chat_template(
                template_messages,
                tools=tools,
                chat_template=self.source,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        except Exception as exc:  # jinja raise_exception(...) or a template bug: name the template
            raise RenderError(f"chat template '{self.name}' failed to render: {exc}") from None

    # -- tokens -----------------------------------------------------------------------------------------------
    def _content_spans(self, messages: Sequence[Message], text: str, add_generation_prompt: bool, tools) -> list[tuple[int, int]]:
        """Character spans of each message's content inside `text` (less its image texts), found by rendering with
        sentinels."""
        # a call without text stays empty (a sentinel there would change the template's glue); it has no data
        marked = [Message(m.role, "" if m.tool_calls and not m.content else f"\ue000{i}\ue001", tool_calls=m.tool_calls)
                  for i, m in enumerate(messages)]
        skeleton = self.render_text(marked, add_generation_prompt, tools)
        for transform in (lambda s: s, str.strip):
            pieces, spans, pos = [], [], 0
            last = 0
            for match in _SENTINEL.finditer(skeleton):
                pieces.append(skeleton[last:match.start()])
                pos += match.start() - last
                message = messages[int(match.group(1))]
                content = transform(self._content(message))
                spans += self._data_spans(message, content, pos)
                pieces.append(content)
                pos += len(content)
                last = match.end()
            pieces.append(skeleton[last:])
            if "".join(pieces) == text:
                return spans
        raise TemplateError(
            f"chat template '{self.name}' transforms message content, so special-token text inside a message "
            "cannot be kept as plain text; remove that text from the data or use another template"
        )

    def _data_spans(self, message: Message, content: str, pos: int) -> list[tuple[int, int]]:
        """The spans of `content` (placed at `pos`) that are data: all of it, less its image texts."""
        if not message.images:
            return [(pos, pos + len(content))]
        spans, start, image_text = [], 0, self.images.image_text
        while (hit := content.find(image_text, start)) >= 0:
            spans.append((pos + start, pos + hit))
            start = hit + len(image_text)
        spans.append((pos + start, pos + len(content)))
        return [(a, b) for a, b in spans if b > a]

    def tokenize(self, messages: Sequence[Message], text: str, add_generation_prompt: bool = False, tools=None):
        contents = self._data_contents(messages)
        protected = []
        if holds_added_token(self.tokenizer, contents):
            protected = self._content_spans(messages, text, add_generation_prompt, tools)
        return tokenize_with_offsets(self.tokenizer, text, protected)

    def prompt_ids(self, messages: Sequence[Message | dict], tools=None) -> list[int]:
        """Ids of the prompt for generating the next assistant turn — the same ids training saw before it."""
        msgs = [m if isinstance(m, Message) else Message(m["role"], m["content"]) for m in messages]
        text = self.render_text(msgs, add_generation_prompt=True, tools=tools)
        ids, _ = self.tokenize(msgs, text, add_generation_prompt=True, tools=tools)
        images = [image for m in msgs for image in (m.images or ())]
        if images:
            ids = self.images.expand(Encoded(ids, [IGNORE_INDEX] * len(ids)), images).input_ids
        return ids

    def prompt_text(self, messages: Sequence[Message | dict], tools=None) -> str:
        msgs = [m if isinstance(m, Message) else Message(m["role"], m["content"]) for m in messages]
        return self.render_text(msgs, add_generation_prompt=True, tools=tools)

    # -- labels -----------------------------------------------------------------------------------------------
    def assistant_spans(self, conv: Conversation, text: str) -> list[tuple[int, int, int]]:
        """(message index, start, end) character spans of each assistant turn in the full rendering `text`.

        Equal to `exact_spans`, in time linear in the conversation (see `ember.data.layout`)."""
        msgs = conv.messages
        answers = [i for i, m in enumerate(msgs) if m.role == "assistant"]
        if not answers:
            return []
        layout = self.layout
        skeleton = None
        if not layout.exact_only and (len(answers) > 1 or answers[0] != len(msgs) - 1):
            dicts = self.template_messages(msgs, conv.tools)
            contents = [d.get("content") if isinstance(d.get("content"), str) else None for d in dicts]
            if all(c is not None for c in contents):
                # A call without text keeps its empty content: templates write "\n" + text only when there is text,
                # so a sentinel there would change the glue. Its own span is then always computed exactly.
                bare = [bool(d.get("tool_calls")) and not d["content"] for d in dicts]
                marked = [d if b else {**d, "content": sentinel(k)} for k, (d, b) in enumerate(zip(dicts, bare,
                                                                                                  strict=True))]
                skeleton = build_skeleton(self._render(marked, False, conv.tools), contents, text, bare)
        if skeleton is None:  # one final answer (one prefix render is all it takes), or contents the template alters
            return self.exact_spans(conv, text)
        shift = len(dicts) - len(msgs)  # a system message put first to hold the tool list
        roles = [d["role"] for d in dicts]
        calls = [bool(d.get("tool_calls")) for d in dicts]
        auditing = layout.audits_left > 0
        if auditing:
            layout.audits_left -= 1
        spans = []
        for k, i in enumerate(answers):
            last = i == len(msgs) - 1
            placed = layout.place(skeleton, roles, calls, i + shift, last)
            # An audit checks a conversation's first answers and its last one: every glue shape shows there, and
            # a long conversation audited whole would cost O(turns²) again.
            if placed is not None and not (auditing and (k < AUDITED_ANSWERS or i == answers[-1])):
                spans.append((i, *placed))
                continue
            exact = self._exact_span(conv, text, i)
            if placed is not None and placed != exact[1:]:
                layout.exact_only = True  # the template's glue varies with position: never guess again
                layout_log.warning("chat template '%s': answer spans depend on their position (%s); rendering every "
                                   "prefix from now on (exact, slower)", self.name, conv.source)
            elif placed is None:
                layout.learn(skeleton, roles, calls, i + shift, last, *exact[1:])
            spans.append(exact)
        return spans

    def exact_spans(self, conv: Conversation, text: str) -> list[tuple[int, int, int]]:
        """The definition: render each answer's prefixes (O(turns²)); the reference `assistant_spans` equals."""
        return [self._exact_span(conv, text, i) for i, m in enumerate(conv.messages) if m.role == "assistant"]

    def _exact_span(self, conv: Conversation, text: str, i: int) -> tuple[int, int, int]:
        msgs = conv.messages
        before = self.render_text(msgs[:i], add_generation_prompt=True, tools=conv.tools)
        through = text if i == len(msgs) - 1 else self.render_text(msgs[: i + 1], tools=conv.tools)
        if not (text.startswith(through) and through.startswith(before)):
            raise TemplateError(
                f"chat template '{self.name}' is not prefix-stable (rendering turn {i + 1} changes earlier text, "
                f"{conv.source}); labels would be wrong. Use a shipped template (data.template) instead"
            )
        return i, len(before), len(through)

    def encode(self, conv: Conversation, mask: str = "all_assistant") -> Encoded:
        return self.encode_batch([conv], mask)[0]

    def encode_batch(self, convs: Sequence[Conversation], mask: str = "all_assistant") -> list[Encoded]:
        """Encode many conversations; texts without special-token content are tokenised in one fast batch call."""
        texts = [self.render_text(c.messages, tools=c.tools) for c in convs]
        plain = [i for i, c in enumerate(convs) if not holds_added_token(self.tokenizer, self._data_contents(c.messages))]
        tokens = dict(zip(plain, tokenize_batch(self.tokenizer, [texts[i] for i in plain]), strict=True))
        out = []
        for i, conv in enumerate(convs):
            ids, offsets = tokens[i] if i in tokens else self.tokenize(conv.messages, texts[i], tools=conv.tools)
            enc = self._label(conv, texts[i], ids, offsets, mask)
            images = [image for m in conv.messages for image in (m.images or ())]
            if images:
                enc = self.images.expand(enc, images)
            elif i in tokens:  # plain text (no content protected from the added tokens): ids follow offsets 1:1
                enc.text, enc.offsets = texts[i], offsets
            out.append(enc)
        return out

    def _label(self, conv: Conversation, text: str, ids: list[int], offsets, mask: str) -> Encoded:
        n = len(ids)
        enc = Encoded(ids, list(ids) if mask == "all" else [IGNORE_INDEX] * n, conv.source)
        if mask == "all" and all(m.train is not False and m.weight == 1 for m in conv.messages if m.role == "assistant"):
            return enc  # nothing to carve out: skip finding the answers
        spans = self.assistant_spans(conv, text)
        last = spans[-1][0] if spans else -1
        stop_ids = set(self.stop_token_ids)
        answers, runs = [], []  # runs: (first token, end token, trained, weight) of each answer's labels
        for index, start, end in spans:
            msg = conv.messages[index]
            # Tokens cover the text in order, so their start offsets never decrease: no scan.
            first = first_token_from(offsets, start)
            straddles = first > 0 and offsets[first - 1][1] > start
            if straddles:
                # A token that merges the end of the role header with the start of the answer (e.g. "Assistant: " +
                # "Red" → " Red") is the answer's first token: train it, or the answer's start is never learned.
                first -= 1
            stop = first_token_from(offsets, end)
            answers.append((index, first, stop))
            closing = next((t for t in range(stop - 1, first - 1, -1) if ids[t] in stop_ids), None)
            upto = closing + 1 if closing is not None else stop  # the span ends with its last end-of-turn token
            trained = msg.train if msg.train is not None else (mask != "last_assistant" or index == last)
            runs.append((first, upto, trained and msg.weight != 0, msg.weight))
            if trained and msg.weight != 0:
                if straddles:
                    enc.warnings.append(
                        f"{conv.source}: turn {index}: one token spans the role header and the answer; generation "
                        "prompts end before it, so this template tokenises prompts differently from training"
                    )
                if closing is None:
                    enc.warnings.append(f"{conv.source}: assistant turn {index} has no end-of-turn token to train")
        enc.answers = answers
        weighted = any(trained and weight != 1 for _, _, trained, weight in runs)
        weights = ([1.0] * n if mask == "all" else [0.0] * n) if weighted else None
        for first, upto, trained, weight in runs:
            # only mode `all` has labels here to take away: `train: false` means never trained
            enc.labels[first:upto] = ids[first:upto] if trained else [IGNORE_INDEX] * (upto - first)
            if weights is not None:
                weights[first:upto] = [weight if trained else 0.0] * (upto - first)
        enc.weights = weights
        return enc


def tokenize_batch(tokenizer, texts: Sequence[str]) -> list[tuple[list[int], Sequence[tuple[int, int]]]]:
    """(ids, character offsets) of each text, as `tokenizer(text, add_special_tokens=False)` gives them, in one call
    to the fast tokenizer's backend (which runs the batch on several threads)."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # transformers leaves the backend as its last call set it: this flag (`split_special_tokens=True` for
        # protected text), and the truncation and padding of a call that asked for them, which it turns off again
        # only at the start of its next call. Unreset, a tokenizer once called with `truncation=True, max_length=3`
        # would cut every conversation here to 3 tokens.
        backend.encode_special_tokens = getattr(tokenizer, "split_special_tokens", False)
        if backend.truncation is not None:
            backend.no_truncation()
        if backend.padding is not None:
            backend.no_padding()
        return [(e.ids, EncodingOffsets(e)) for e in backend.encode_batch(list(texts), add_special_tokens=False)]
    batch = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    return [(list(ids), [tuple(o) for o in offs]) for ids, offs in zip(batch["input_ids"], batch["offset_mapping"], strict=True)]


def tokenizer_identity(tokenizer) -> str:
    """A digest of everything in the tokenizer that changes ids: vocab, added/special tokens, chat template."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # The fast tokenizer's whole definition (added tokens, normalizer, pre-tokenizer, model with its merges),
        # from its JSON: four times quicker than sorting the vocabulary, and merges change ids too. What comes
        # before "added_tokens" is the truncation/padding state the last call left, which changes no id.
        definition = backend.to_str()
        h.update(definition[max(0, definition.find('"added_tokens"')):].encode("utf-8"))
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode("utf-8"))
        h.update(json.dumps(sorted(tokenizer.get_added_vocab().items()), ensure_ascii=False).encode("utf-8"))
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode("utf-8"))
    h.update(str(tokenizer.chat_template).encode("utf-8"))
    h.update(type(tokenizer).__name__.encode("utf-8"))
    return h.hexdigest()


def require_trainable(enc: Encoded) -> Encoded:
    if enc.trained_tokens == 0:
        raise DataError(enc.source, None, "nothing to train: no assistant tokens are trained in this sample")
    return enc
