"""Images in conversations: where a record names an image (a path, a data URL, bytes) → the encoded file's bytes.

A message's images travel as the bytes of their files (PNG, JPEG, ...) in `Message.images`, in the order of the
`<image>` markers in its text. Images are read once, when a record is converted, so processed data never depends on
files that may move; they are decoded (PIL) only to learn their size and, at batching time, into pixels.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any, Optional

from ember.errors import DataError

IMAGE_MARKER = "<image>"  # where an image stands in a message's text (LLaMA-Factory / ms-swift convention)
MAX_IMAGE_PIXELS = 89_478_485  # PIL's own decompression-bomb limit, stated here so a server applies it too


def base_dir(source: str) -> Optional[Path]:
    """The folder of the data file a record came from (`path:line`), against which relative image paths resolve."""
    head = source.rsplit(":", 1)[0]
    path = Path(head)
    return path.parent if head and path.is_file() else None


def read_image(value: Any, base: Optional[Path], source: str, field: str) -> bytes:
    """The bytes of one image named by a record: a path (relative to the data file), a `data:image/...;base64,`
    URL, a `{"path"|"bytes"|"url": ...}` object (the `datasets` Image feature and OpenAI's `image_url`), or bytes."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            value = value["bytes"]
        elif value.get("path") is not None:
            value = value["path"]
        elif value.get("url") is not None:
            value = value["url"]
        elif value.get("image") is not None:
            value = value["image"]
        else:
            raise DataError(source, field, f"an image object needs 'path', 'bytes' or 'url'; got keys {sorted(value)}")
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif isinstance(value, str):
        data = _from_text(value, base, source, field)
    else:
        raise DataError(source, field, f"expected an image path, data URL or bytes, got {type(value).__name__}")
    check_image(data, source, field)
    return data


def _from_text(value: str, base: Optional[Path], source: str, field: str) -> bytes:
    if value.startswith("data:"):
        return decode_data_url(value, source, field)
    if value.startswith(("http://", "https://")):
        raise DataError(source, field, f"image URLs are not fetched ({value[:80]}): download the image and name the "
                                       "file, or embed it as a data:image/...;base64 URL")
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    if not path.is_file():
        raise DataError(source, field, f"image file not found: {path} (relative paths are read from the data "
                                       "file's folder)")
    return path.read_bytes()


def decode_data_url(url: str, source: str = "request", field: str = "image_url") -> bytes:
    """The bytes of a `data:image/png;base64,...` URL."""
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:image/") or not head.endswith(";base64"):
        raise DataError(source, field, "expected a data URL of the form data:image/<type>;base64,<data>")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise DataError(source, field, "the data URL's base64 payload does not decode") from None


def check_image(data: bytes, source: str, field: str) -> tuple[int, int]:
    """(width, height) of an encoded image; a file PIL cannot read, or an over-large one, is a DataError."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            im.verify()
    except Exception as exc:  # PIL raises many types for a broken file
        raise DataError(source, field, f"not a readable image ({type(exc).__name__}: {exc})") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(source, field, f"image of {width}x{height} pixels is over the {MAX_IMAGE_PIXELS:,}-pixel limit")
    return width, height


def open_image(data: bytes):
    """The decoded RGB image (PIL) of encoded bytes."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def count_markers(text: str) -> int:
    return text.count(IMAGE_MARKER)
