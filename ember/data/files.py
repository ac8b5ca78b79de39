"""Read records from .json / .jsonl / .csv / .parquet / .txt files (or a `datasets` hub id), each tagged file:line.

Files are read as streams: memory stays bounded by the largest record (at most `max_record_bytes`), not by the
file, so a 10 GB JSON Lines file reads like a small one. A record over the limit is a skippable error naming its line.
"""

from __future__ import annotations

import codecs
import csv
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Optional

from ember.errors import DataError

SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt")
MAX_RECORD_BYTES = 64 << 20
_CHUNK = 1 << 20

# Each yielded item is (source, record) where record is a dict, or a DataError for a record that could not be read.
RecordItem = tuple[str, "dict[str, Any] | DataError"]


def data_files(path: str) -> list[Path]:
    """The data files behind `path`: the file itself, or every data file under a folder (sorted)."""
    p = Path(path)
    if not p.exists():
        raise DataError(path, None, "file not found")
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in SUFFIXES and f.is_file())
        if not files:
            raise DataError(path, None, f"directory holds no data file ({', '.join(SUFFIXES)})")
        return files
    return [p]


def iter_records(path: str, hub_split: str = "train", subset: str | None = None, streaming: bool = False,
                 max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[RecordItem]:
    if not Path(path).exists() and looks_like_hub_id(path):
        yield from _iter_hub(path, hub_split, subset, streaming)
        return
    for f in data_files(path):
        yield from iter_file(f, max_record_bytes)


def iter_file(p: Path, max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[RecordItem]:
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        yield from _iter_parquet(p)
        return
    if suffix not in SUFFIXES:
        raise DataError(str(p), None, f"unsupported file type '{suffix}': expected one of {', '.join(SUFFIXES)}")
    with open(p, "rb") as f:
        if suffix == ".jsonl" or (suffix == ".json" and not _starts_with_bracket(f)):
            yield from _iter_jsonl(p, f, max_record_bytes)  # many ".json" files are really JSON Lines (BELLE)
        elif suffix == ".json":
            yield from _iter_json_array(p, f, max_record_bytes)
        elif suffix == ".csv":
            yield from _iter_csv(p, f)
        else:
            yield from _iter_txt(p, f)


def _starts_with_bracket(f: IO[bytes]) -> bool:
    head = f.read(4096).removeprefix(codecs.BOM_UTF8).lstrip()  # editors on Windows save a BOM before the '['
    while not head and (more := f.read(4096)):
        head = more.lstrip()
    f.seek(0)
    return head.startswith(b"[")


def _decode_error(p: Path, data: bytes, exc: UnicodeDecodeError, first_line: int) -> DataError:
    line = data[: exc.start].count(b"\n") + first_line
    col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
    return DataError(f"{p}:{line}", None,
                     f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at column {col}): re-save the file as UTF-8")


def _text_blocks(p: Path, f: IO[bytes]) -> Iterator[tuple[int, str]]:
    """(number of the first line, text) for blocks of whole lines; bad UTF-8 raises a DataError with line and column."""
    line, rest, first = 1, b"", True
    while True:
        chunk = f.read(_CHUNK)
        data = rest + chunk
        if first:
            data, first = data.removeprefix(codecs.BOM_UTF8), False
        cut = data.rfind(b"\n") + 1 if chunk else len(data)
        if cut == 0 and chunk:
            rest = data  # no newline yet: a long line, keep reading
            continue
        block, rest = data[:cut], data[cut:]
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _decode_error(p, block, exc, line) from None
        if text:
            yield line, text
        line += text.count("\n")
        if not chunk:
            return


def _iter_jsonl(p: Path, f: IO[bytes], limit: int) -> Iterator[RecordItem]:
    for lineno in itertools.count(1):
        raw = f.readline(limit + 1)
        if not raw:
            return
        source = f"{p}:{lineno}"
        if len(raw) > limit and not raw.endswith(b"\n"):
            size = len(raw)
            while (more := f.readline(_CHUNK)) and not more.endswith(b"\n"):
                size += len(more)  # skip the rest of the oversized line without holding it
            size += len(more)
            yield source, DataError(source, None, f"record of {size:,} bytes is over data.max_record_bytes={limit:,}: "
                                                  "raise the limit or split the record")
            continue
        raw = raw.removesuffix(b"\n")
        if lineno == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            err = _decode_error(p, raw, exc, lineno)
            yield source, DataError(source, None, err.problem)
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            yield source, DataError(source, None, f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        except RecursionError:
            yield source, DataError(source, None, "invalid JSON: nested too deeply")
            continue
        if not isinstance(record, dict):
            yield source, DataError(source, None, f"expected a JSON object per line, got {type(record).__name__}")
            continue
        yield source, record


def _iter_json_array(p: Path, f: IO[bytes], limit: int) -> Iterator[RecordItem]:
    """Objects of a top-level JSON array, decoded one at a time from a buffer that starts at a line start (so
    decoder line/column numbers stay right) and never holds more than one record plus a read chunk."""
    blocks = _text_blocks(p, f)
    buffer, line0, pos, done = "", 1, 0, False  # line0: file line number of buffer[0]

    def more() -> bool:
        nonlocal buffer, done
        if done:
            return False
        block = next(blocks, None)
        if block is None:
            done = True
            return False
        buffer += block[1]
        return True

    while True:  # find the opening bracket
        at = buffer.find("[")
        if at >= 0:
            pos = at + 1
            break
        if not more():
            raise DataError(f"{p}:1", None, "invalid JSON: expected a '[' to open the array")
    decoder = json.JSONDecoder()
    while True:
        while True:
            while pos < len(buffer) and buffer[pos] in " \t\r\n,":
                pos += 1
            if pos < len(buffer) or not more():
                break
        line = line0 + buffer.count("\n", 0, pos)
        if pos >= len(buffer):
            raise DataError(f"{p}:{line}", None, "invalid JSON: the file ends before the closing ']' (truncated?)")
        if buffer[pos] == "]":
            return
        source = f"{p}:{line}"
        while True:
            try:
                record, end = decoder.raw_decode(buffer, pos)
                break
            except RecursionError:
                raise DataError(source, None, "invalid JSON: nested too deeply") from None
            except json.JSONDecodeError as exc:
                if len(buffer) - pos <= limit and more():
                    continue  # the record is not complete in the buffer yet
                if not done and len(buffer) - pos > limit:
                    raise DataError(source, None, f"a record over data.max_record_bytes={limit:,}, or invalid JSON "
                                                  "there; raise the limit if the record is meant to be this large") from None
                # Inside an array one broken record breaks the rest of the file: stop here, whatever on_error says.
                raise DataError(f"{p}:{line0 + exc.lineno - 1}", None,
                                f"invalid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(record, dict):
            yield source, DataError(source, None, f"expected a JSON object, got {type(record).__name__}")
        else:
            yield source, record
        pos = end
        cut = buffer.rfind("\n", 0, pos) + 1  # drop what is read, keeping the buffer at a line start
        if cut:
            line0 += buffer.count("\n", 0, cut)
            buffer, pos = buffer[cut:], pos - cut


def _lines(p: Path, f: IO[bytes]) -> Iterator[str]:
    for _, text in _text_blocks(p, f):
        yield from text.splitlines(keepends=True)


def _iter_csv(p: Path, f: IO[bytes]) -> Iterator[RecordItem]:
    reader = csv.DictReader(_lines(p, f))
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


def _iter_txt(p: Path, f: IO[bytes]) -> Iterator[RecordItem]:
    for first, text in _text_blocks(p, f):
        for offset, line in enumerate(text.split("\n")):
            if line.strip():
                yield f"{p}:{first + offset}", {"text": line}


def _iter_parquet(p: Path) -> Iterator[RecordItem]:
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(p).iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            row += 1
            yield f"{p}:row {row}", record


def looks_like_hub_id(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not path.startswith((".", "/")) and "." not in Path(path).suffix


def _iter_hub(repo_id: str, split: str, subset: Optional[str], streaming: bool,
              data_files: Optional[str] = None) -> Iterator[RecordItem]:
    """A `datasets` hub id (needs network access); `streaming` reads rows as they arrive instead of downloading the
    whole set first. `data_files` narrows the repository to some of its files."""
    import datasets

    try:
        ds = datasets.load_dataset(repo_id, subset, split=split, streaming=streaming, data_files=data_files)
    except Exception as exc:  # network, auth, missing repo: the message is the user's lead
        raise DataError(repo_id, None, f"could not load from the hub: {exc}") from None
    for i, row in enumerate(ds, start=1):
        yield f"{repo_id}[{split}]:row {i}", dict(row)
