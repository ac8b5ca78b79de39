"""Plain text for vocabulary work: .txt lines, .json/.jsonl records ({text} or the chinese-poetry shapes).

A document is one string: a .txt line, a record's `text`, or one list of paragraphs joined by newlines (a poem, a
chapter). Without `field`, text is taken from TEXT_KEYS, descending only through those keys (so the questions and
answers beside a cmrc2018 `context` are not read twice); with `field`, from that key at any depth.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

from ember.data.files import SUFFIXES, iter_records
from ember.errors import DataError

TEXT_KEYS = ("text", "content", "paragraphs", "context", "abstract", "comment", "data")


def read_corpus(paths: Sequence[str | Path], field: Optional[str] = None) -> list[str]:
    """All documents of `paths` (files or folders), in file order; raises `DataError` when none has text."""
    if not paths:
        raise DataError("--corpus", None, "no corpus file given: pass one or more .txt, .jsonl or .json files")
    docs: list[str] = []
    for path in paths:
        docs.extend(iter_documents(path, field))
    if not docs:
        where = ", ".join(str(p) for p in paths)
        hint = f"no value under '{field}'" if field else f"no text under any of {', '.join(TEXT_KEYS)}"
        raise DataError(where, field, f"{hint}: name the text field with --field")
    return docs


def iter_documents(path: str | Path, field: Optional[str] = None) -> Iterator[str]:
    p = Path(path)
    if not p.exists():
        raise DataError(str(p), None, "file not found")
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
        if not files:
            raise DataError(str(p), None, f"folder holds no text file ({', '.join(SUFFIXES)})")
        for f in files:
            yield from iter_documents(f, field)
        return
    whole = _single_json_object(p)
    records = [(str(p), whole)] if whole is not None else iter_records(str(p))
    for _source, record in records:
        if isinstance(record, DataError):
            raise record
        yield from record_texts(record, field)


def record_texts(record: Any, field: Optional[str] = None) -> Iterator[str]:
    """The documents inside one JSON value (see the module docstring for which keys are read)."""
    if isinstance(record, dict):
        for key, value in record.items():
            if key == field or (field is None and key in TEXT_KEYS):
                yield from _texts_of(value, field)
            elif field is not None:
                yield from record_texts(value, field)
    elif isinstance(record, list):
        for item in record:
            yield from record_texts(item, field)


def _texts_of(value: Any, field: Optional[str]) -> Iterator[str]:
    if isinstance(value, str):
        if value.strip():
            yield value
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        joined = "\n".join(value)
        if joined.strip():
            yield joined
    else:
        yield from record_texts(value, field)


def _single_json_object(p: Path) -> Optional[dict]:
    """A .json file holding one (pretty-printed) object, as several chinese-poetry files do."""
    if p.suffix.lower() != ".json":
        return None
    with open(p, "rb") as f:
        head = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head.startswith(b"{"):
        return None
    try:
        value = json.loads(p.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # not one object: JSON Lines, read (and reported) record by record
    return value if isinstance(value, dict) else None
