"""Read records from .json / .jsonl / .csv / .parquet / .txt files (or a `datasets` hub id), each tagged file:line."""

from __future__ import annotations

import bisect
import codecs
import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ember.errors import DataError

SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt")

# Each yielded item is (source, record) where record is a dict, or a DataError for a record that could not be read.
RecordItem = tuple[str, "dict[str, Any] | DataError"]


def iter_records(path: str, hub_split: str = "train", subset: str | None = None) -> Iterator[RecordItem]:
    p = Path(path)
    if not p.exists():
        if _looks_like_hub_id(path):
            yield from _iter_hub(path, hub_split, subset)
            return
        raise DataError(path, None, "file not found")
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix in SUFFIXES)
        if not files:
            raise DataError(path, None, f"directory holds no data file ({', '.join(SUFFIXES)})")
        for f in files:
            yield from iter_records(str(f))
        return
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        yield from _iter_parquet(p)
        return
    data = p.read_bytes()
    if suffix == ".jsonl":
        yield from _iter_jsonl(p, data)
    elif suffix == ".json":
        stripped = data.removeprefix(codecs.BOM_UTF8).lstrip()  # editors on Windows save a BOM before the '['
        if stripped.startswith(b"["):
            yield from _iter_json_array(p, data)
        else:  # many ".json" files are really JSON Lines (BELLE, PromptCBLUE)
            yield from _iter_jsonl(p, data)
    elif suffix == ".csv":
        yield from _iter_csv(p, data)
    elif suffix == ".txt":
        yield from _iter_txt(p, data)
    else:
        raise DataError(str(p), None, f"unsupported file type '{suffix}': expected one of {', '.join(SUFFIXES)}")


def _decode(p: Path, data: bytes, line_offset: int = 0) -> str:
    try:
        return data.decode("utf-8-sig" if line_offset == 0 else "utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1 + line_offset
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(
            f"{p}:{line}", None, f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at column {col}): re-save the file as UTF-8"
        ) from None


def _iter_jsonl(p: Path, data: bytes) -> Iterator[RecordItem]:
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        source = f"{p}:{lineno}"
        if not raw.strip():
            continue
        try:
            text = _decode(p, raw, line_offset=lineno - 1 if lineno > 1 else 0)
            if lineno == 1:
                text = text.lstrip("\ufeff")
        except DataError as err:
            yield source, DataError(source, None, err.problem)
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            yield source, DataError(source, None, f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        if not isinstance(record, dict):
            yield source, DataError(source, None, f"expected a JSON object per line, got {type(record).__name__}")
            continue
        yield source, record


def _iter_json_array(p: Path, data: bytes) -> Iterator[RecordItem]:
    text = _decode(p, data)
    newlines = [i for i, ch in enumerate(text) if ch == "\n"]

    def line_of(pos: int) -> int:
        return bisect.bisect_right(newlines, pos - 1) + 1

    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    n = len(text)
    while True:
        while pos < n and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= n:
            raise DataError(f"{p}:{line_of(n)}", None, "invalid JSON: the file ends before the closing ']' (truncated?)")
        if text[pos] == "]":
            return
        source = f"{p}:{line_of(pos)}"
        try:
            record, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            # Inside an array one broken record breaks the rest of the file: stop here, whatever on_error says.
            raise DataError(f"{p}:{exc.lineno}", None, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(record, dict):
            yield source, DataError(source, None, f"expected a JSON object, got {type(record).__name__}")
        else:
            yield source, record
        pos = end


def _iter_csv(p: Path, data: bytes) -> Iterator[RecordItem]:
    text = _decode(p, data)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None:  # an empty file (reading the header also makes line_num count from row 1)
        return
    start = reader.line_num + 1  # a row is named by the line it starts on (quoted newlines make it span several)
    for row in reader:
        source = f"{p}:{start}"
        start = reader.line_num + 1
        if None in row:
            yield source, DataError(source, None, f"more cells than the {len(reader.fieldnames or [])} header columns")
            continue
        yield source, {k: v for k, v in row.items() if k is not None}


def _iter_txt(p: Path, data: bytes) -> Iterator[RecordItem]:
    text = _decode(p, data)
    for lineno, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            yield f"{p}:{lineno}", {"text": line}


def _iter_parquet(p: Path) -> Iterator[RecordItem]:
    import pyarrow.parquet as pq

    table = pq.read_table(p)
    for i, row in enumerate(table.to_pylist(), start=1):
        yield f"{p}:row {i}", row


def _looks_like_hub_id(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not path.startswith((".", "/")) and "." not in Path(path).suffix


def _iter_hub(repo_id: str, split: str, subset: str | None) -> Iterator[RecordItem]:
    """A `datasets` hub id; needs network access (not available in tests)."""
    import datasets

    try:
        ds = datasets.load_dataset(repo_id, subset, split=split)
    except Exception as exc:  # network, auth, missing repo: the message is the user's lead
        raise DataError(repo_id, None, f"could not load from the hub: {exc}") from None
    for i, row in enumerate(ds, start=1):
        yield f"{repo_id}[{split}]:row {i}", dict(row)
