"""Records with images → `Conversation`s whose messages carry their images (ember.data.images).

Two shapes are read, on top of the text formats of `ember.data.formats`:
- OpenAI messages whose `content` is a list of parts: `{"type": "text", "text"}`, `{"type": "image_url",
  "image_url": {"url"}}` (a data URL or a path) and `{"type": "image", "image" | "path" | "url"}` (transformers'
  chat-template shape). Parts join in order; each image becomes an `<image>` marker where it stood.
- LLaMA-Factory / ms-swift: a record-level `images` list (paths, data URLs or `{"path"|"bytes"}`) with `<image>`
  markers in the text of any format (sharegpt, openai, alpaca, ...), taken in order.
The number of markers must equal the number of images.
"""

from __future__ import annotations

from typing import Any, Optional

from ember.data.conversation import Conversation, validate_conversation
from ember.data.formats import CONVERTERS
from ember.data.images import IMAGE_MARKER, base_dir, count_markers, read_image
from ember.errors import DataError

IMAGE_PART_TYPES = ("image_url", "image", "input_image")


def convert_with_images(fmt: str, record: dict[str, Any], source: str, columns: dict[str, str],
                        system: Optional[str] = None) -> Conversation:
    """Convert and validate one record that may hold images; raises DataError naming the file:line and field."""
    base = base_dir(source)
    per_message: dict[int, list[bytes]] = {}
    if fmt == "openai" and isinstance(record.get("messages"), list):
        record, per_message = _flatten_parts(record, source, base)
    conv = CONVERTERS[fmt](record, source, columns)
    if not isinstance(conv, Conversation):
        raise DataError(source, None, f"format '{fmt}' holds no conversation")
    listed = _listed_images(record, source, base)
    if per_message and listed:
        raise DataError(source, "images", "images are given both as message parts and as a record-level 'images' "
                                          "list: use one of the two")
    for index, images in per_message.items():
        conv.messages[index].images = images
    if listed:
        _distribute(conv, listed, source)
    conv = validate_conversation(conv.with_system(system))
    check_markers(conv)
    return conv


def _flatten_parts(record: dict[str, Any], source: str, base) -> tuple[dict[str, Any], dict[int, list[bytes]]]:
    """The record with list contents joined into text (images as markers), and each message's images."""
    messages, images = [], {}
    for i, m in enumerate(record["messages"]):
        content = m.get("content") if isinstance(m, dict) else None
        if not isinstance(content, list):
            messages.append(m)
            continue
        texts, found = [], []
        for k, part in enumerate(content):
            field = f"messages[{i}].content[{k}]"
            if isinstance(part, str):
                texts.append(part)
                continue
            if not isinstance(part, dict) or "type" not in part:
                raise DataError(source, field, "expected a content part {type: text | image_url | image, ...}")
            kind = part["type"]
            if kind == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise DataError(source, f"{field}.text", f"expected a string, got {type(text).__name__}")
                texts.append(text)
            elif kind in IMAGE_PART_TYPES:
                value = part.get(kind, part)
                if isinstance(value, dict) and "url" in value:
                    value = value["url"]
                found.append(read_image(value, base, source, f"{field}.{kind}"))
                texts.append(IMAGE_MARKER)
            else:
                raise DataError(source, f"{field}.type", f"unknown content part type '{kind}': expected text, "
                                                         f"{', '.join(IMAGE_PART_TYPES)}")
        joined = "".join(texts)
        if found and count_markers(joined) != len(found):
            raise DataError(source, f"messages[{i}].content", f"the text parts hold '{IMAGE_MARKER}' themselves, so "
                                                              "the images cannot be placed: remove it from the text")
        messages.append({**m, "content": joined})
        if found:
            images[i] = found
    return {**record, "messages": messages}, images


def _listed_images(record: dict[str, Any], source: str, base) -> list[bytes]:
    value = record.get("images")
    if value is None or value == []:
        return []
    if not isinstance(value, list):
        value = [value]
    return [read_image(v, base, source, f"images[{k}]") for k, v in enumerate(value)]


def _distribute(conv: Conversation, images: list[bytes], source: str) -> None:
    """Give each message the next images, one per `<image>` marker in its text."""
    markers = sum(count_markers(m.content) for m in conv.messages)
    if markers != len(images):
        raise DataError(source, "images", f"{len(images)} image(s) but {markers} '{IMAGE_MARKER}' marker(s) in the "
                                          f"text: put one '{IMAGE_MARKER}' where each image goes")
    taken = 0
    for m in conv.messages:
        n = count_markers(m.content)
        if n:
            m.images = images[taken: taken + n]
            taken += n


def check_markers(conv: Conversation) -> None:
    """Each message with images holds exactly one marker per image, and only user messages hold images."""
    for i, m in enumerate(conv.messages):
        if not m.images:
            continue
        if m.role != "user":
            raise DataError(conv.source, f"messages[{i}]", f"a {m.role} message holds images: only user messages may")
        if count_markers(m.content) != len(m.images):
            raise DataError(conv.source, f"messages[{i}].content", f"{len(m.images)} image(s) but "
                                                                   f"{count_markers(m.content)} '{IMAGE_MARKER}' marker(s)")
