"""Read records from .json / .jsonl / .csv / .parquet / .txt files (or a `datasets` hub id), each tagged file:line.

Files are read as streams: memory stays bounded by the largest record (at most `max_record_bytes`), not by the
file, so a 10 GB JSON Lines file reads like a small one. A record over the limit is a skippable error naming its line.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Optional

from ember.config.schema import DataConfig
from ember.errors import DataError

SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt")
MAX_RECORD_BYTES = DataConfig.max_record_bytes
_CHUNK = 1 << 20

# Each yielded item is (source, record) where record is a dict, or a DataError for a record that could not be read.
RecordItem = tuple[str, "dict[str, Any] | DataError"]
# Told how many more bytes of the file have been read (a progress bar's `update`).
Progress = Optional[Callable[[int], Any]]
# A \uD800-\uDFFF escape: JSON may spell half a UTF-16 pair, which is no Unicode text (nothing can encode it).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


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
                 max_record_bytes: int = MAX_RECORD_BYTES, progress: Progress = None) -> Iterator[RecordItem]:
    if not Path(path).exists() and looks_like_hub_id(path):
        yield from _iter_hub(path, hub_split, subset, streaming)
        return
    for f in data_files(path):
        yield from iter_file(f, max_record_bytes, progress)


def iter_file(p: Path, max_record_bytes: int = MAX_RECORD_BYTES, progress: Progress = None) -> Iterator[RecordItem]:
    """The records of one file, in order. An unreadable record is yielded as its DataError (the caller skips it or
    stops); a file that cannot be read on past a point raises the DataError naming that point. `progress` is told
    the bytes read as reading goes."""
    suffix = p.suffix.lower()
    tell = progress or (lambda n: None)
    if suffix == ".parquet":
        yield from _iter_parquet(p, tell)
        return
    if suffix not in SUFFIXES:
        raise DataError(str(p), None, f"unsupported file type '{suffix}': expected one of {', '.join(SUFFIXES)}")
    with open(p, "rb") as f:
        layout = _json_layout(f) if suffix == ".json" else "lines"
        if suffix == ".jsonl" or (suffix == ".json" and layout == "lines"):
            yield from _iter_jsonl(p, f, max_record_bytes, tell)  # many ".json" files are really JSON Lines (BELLE)
        elif suffix == ".json":
            yield from _iter_json_array(p, f, max_record_bytes, tell, bracketed=layout == "array")
        elif suffix == ".csv":
            yield from _iter_csv(p, f, max_record_bytes, tell)
        else:
            yield from _iter_txt(p, f, max_record_bytes, tell)


def _json_layout(f: IO[bytes]) -> str:
    """How a .json file holds its records: "array" (`[{...}, ...]`), "values" (pretty-printed objects one after
    another, or one: the first line is a lone `{`) or "lines" (JSON Lines)."""
    head = f.read(4096).removeprefix(codecs.BOM_UTF8).lstrip()  # editors on Windows save a BOM before the '['
    while not head and (more := f.read(4096)):
        head = more.lstrip()
    f.seek(0)
    if head.startswith(b"["):
        return "array"
    return "values" if head.split(b"\n", 1)[0].strip() == b"{" else "lines"


def _decode_error(p: Path, data: bytes, exc: UnicodeDecodeError, first_line: int, first_col: int = 0) -> DataError:
    """Where in the file `data` (which starts at line `first_line`, 0-based column `first_col`) stops being UTF-8."""
    newlines = data[: exc.start].count(b"\n")
    line = first_line + newlines
    col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1 + (0 if newlines else first_col)
    return DataError(f"{p}:{line}", None,
                     f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at column {col}): re-save the file as UTF-8")


def _too_big(source: str, size: int, limit: int) -> DataError:
    return DataError(source, None, f"record of {size:,} bytes is over data.max_record_bytes={limit:,}: raise the "
                                   "limit or split the record")


def _decoded(p: Path, f: IO[bytes], tell: Callable[[int], Any],
             cut: Callable[[bytes], int]) -> Iterator[tuple[int, str]]:
    """(line of its first character, text) of the file read a chunk at a time, each block ending where `cut` says
    (0: read on); the BOM dropped; bytes that are not UTF-8 raise a DataError with line and column."""
    line, col, rest, first = 1, 0, b"", True
    while True:
        chunk = f.read(_CHUNK)
        tell(len(chunk))
        data = rest + chunk
        if first:
            data, first = data.removeprefix(codecs.BOM_UTF8), False
        end = cut(data) if chunk else len(data)
        if end == 0 and chunk:
            rest = data
            continue
        block, rest = data[:end], data[end:]
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _decode_error(p, block, exc, line, col) from None
        if text:
            yield line, text
            newlines = text.count("\n")
            line += newlines
            col = len(text) - text.rfind("\n") - 1 if newlines else col + len(text)
        if not chunk:
            return


def _text_blocks(p: Path, f: IO[bytes], tell: Callable[[int], Any]) -> Iterator[tuple[int, str]]:
    """(number of the first line, text) for blocks of whole lines (a long line: read until it ends)."""
    return _decoded(p, f, tell, lambda data: data.rfind(b"\n") + 1)


def _raw_lines(p: Path, f: IO[bytes], limit: int, tell: Callable[[int], Any]) -> Iterator[tuple[str, "str | DataError"]]:
    """(file:line, text) of each line that is not blank, decoded; a line over `limit` or not UTF-8 comes as its
    DataError. Memory holds one line of at most `limit` bytes."""
    for lineno in itertools.count(1):
        raw = f.readline(limit + 1)
        if not raw:
            return
        tell(len(raw))
        source = f"{p}:{lineno}"
        if len(raw) > limit and not raw.endswith(b"\n"):
            size = len(raw)
            while (more := f.readline(_CHUNK)) and not more.endswith(b"\n"):
                size += len(more)  # skip the rest of the oversized line without holding it
                tell(len(more))
            size += len(more)
            tell(len(more))
            yield source, _too_big(source, size, limit)
            continue
        raw = raw.removesuffix(b"\n").removesuffix(b"\r")
        if lineno == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)
        if not raw.strip():
            continue
        try:
            yield source, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield source, DataError(source, None, _decode_error(p, raw, exc, lineno).problem)


def _iter_jsonl(p: Path, f: IO[bytes], limit: int, tell: Callable[[int], Any]) -> Iterator[RecordItem]:
    for source, text in _raw_lines(p, f, limit, tell):
        if isinstance(text, DataError):
            yield source, text
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            yield source, DataError(source, None, f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        except RecursionError:
            yield source, DataError(source, None, "invalid JSON: nested too deeply")
            continue
        except ValueError as exc:  # valid JSON that Python refuses, e.g. an integer of more than 4300 digits
            yield source, DataError(source, None, f"invalid JSON: {_refusal(exc)}")
            continue
        if not isinstance(record, dict):
            yield source, DataError(source, None, f"expected a JSON object per line, got {type(record).__name__}")
            continue
        bad = _SURROGATE_ESCAPE.search(text) and _lone_surrogate(record)
        yield source, (DataError(source, *bad) if bad else record)


def _lone_surrogate(record: dict[str, Any]) -> Optional[tuple[str, str]]:
    """(field, problem) for the first string holding half a UTF-16 surrogate pair (JSON's "\\ud800"), which no
    tokenizer or file can take; None when every string is Unicode text. Iterative: records may nest deeply."""
    stack: list[tuple[str, Any]] = [("", record)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                return path or "(key)", (f"not valid Unicode: a lone surrogate \\u{ord(value[exc.start]):04x} at "
                                         f"character {exc.start + 1} (half of a UTF-16 pair); fix the text or the "
                                         "program that wrote it")
        elif isinstance(value, dict):
            items = list(value.items())
            stack += [(f"{path}.{k}" if path else str(k), v) for k, v in reversed(items)]
            stack += [(path, k) for k, _ in reversed(items)]  # keys first: a bad key has no field name to give
        elif isinstance(value, list):
            stack += [(f"{path}[{i}]", v) for i, v in reversed(list(enumerate(value)))]
    return None


def _refusal(exc: ValueError) -> str:
    """Why Python refused valid JSON, less its advice to programmers (`sys.set_int_max_str_digits`)."""
    return str(exc).split(";")[0]


# A JSON string (complete) or a lone quote (a string the buffer cuts off), or a bracket.
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|["\[\]{}]')


def _value_end(text: str, at: int, depth: int) -> tuple[Optional[int], int, int]:
    """Scan a JSON object or array from `at` (with `depth` brackets open) without parsing it: (end, None-or-end,
    depth) — end is the offset after its closing bracket, or None with the offset and depth to resume from once the
    buffer holds more. Used to step over a record Python cannot parse (nested too deeply) and read on."""
    for m in _JSON_TOKEN.finditer(text, at):
        token = m.group()
        if token == '"':
            return None, m.start(), depth  # a string runs past the buffer: resume at its start
        if token in ("[", "{"):
            depth += 1
        elif token in ("]", "}"):
            depth -= 1
            if depth == 0:
                return m.end(), m.end(), 0
    return None, len(text), depth


def _utf8_cut(data: bytes) -> int:
    """The length of the longest prefix of `data` that does not end inside a UTF-8 character."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return len(data)
        if byte >= 0xC0:  # the lead byte of the last character: is the character complete?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) if back >= need else len(data) - back
    return len(data)


def _text_chunks(p: Path, f: IO[bytes], tell: Callable[[int], Any]) -> Iterator[str]:
    """The file's text in pieces of about a read chunk, cut anywhere but inside a character (a minified JSON array is
    one long line)."""
    return (text for _, text in _decoded(p, f, tell, _utf8_cut))


class _Window:
    """A window on a text stream: `text` holds what is read from the record being decoded on. `at(i)` is the file
    (line, column) of text[i], for i that never go back: each character is counted once, so reading stays linear."""

    def __init__(self, chunks: Iterator[str]):
        self.chunks, self.text, self.done = chunks, "", False
        self.mark, self.line, self.col = 0, 1, 0  # text[mark] is at file line `line`, 0-based column `col`

    def more(self, keep: int) -> int:
        """Read another chunk, dropping the text before `keep`: the shift of every position (-1: nothing left)."""
        chunk = None if self.done else next(self.chunks, None)
        if chunk is None:
            self.done = True
            return -1
        self.at(keep)
        self.text, self.mark = self.text[keep:] + chunk, 0
        return keep

    def at(self, i: int) -> tuple[int, int]:
        newlines = self.text.count("\n", self.mark, i)
        self.line += newlines
        self.col = i - self.text.rfind("\n", self.mark, i) - 1 if newlines else self.col + i - self.mark
        self.mark = i
        return self.line, self.col + 1


_NOT_SPACE = re.compile(r"\S")


def _iter_json_array(p: Path, f: IO[bytes], limit: int, tell: Callable[[int], Any],
                     bracketed: bool = True) -> Iterator[RecordItem]:
    """Objects of a top-level JSON array (or, not `bracketed`, of JSON values one after another), decoded one at a
    time. Memory holds one record plus a read chunk whatever the line lengths, and reading is linear in the file."""
    w = _Window(_text_chunks(p, f, tell))
    pos = 0
    while bracketed:  # find the opening bracket (the file starts with it, after white space)
        at = w.text.find("[", pos)
        if at >= 0:
            pos = at + 1
            break
        if w.more(len(w.text)) < 0:
            raise DataError(f"{p}:1", None, "invalid JSON: expected a '[' to open the array")
        pos = 0
    decoder = json.JSONDecoder()
    while True:
        while True:
            while pos < len(w.text) and w.text[pos] in " \t\r\n,":
                pos += 1
            if pos < len(w.text) or (shift := w.more(pos)) < 0:
                break
            pos -= shift
        line = w.at(pos)[0]
        if pos >= len(w.text):
            if not bracketed:
                return
            raise DataError(f"{p}:{line}", None, "invalid JSON: the file ends before the closing ']' (truncated?)")
        if bracketed and w.text[pos] == "]":
            look = pos + 1
            while not (extra := _NOT_SPACE.search(w.text, look)):  # only white space may follow: records would be lost
                if (shift := w.more(pos)) < 0:
                    return
                pos, look = pos - shift, len(w.text)
            raise DataError(f"{p}:{w.at(extra.start())[0]}", None, "invalid JSON: more after the array's closing ']' "
                            "(two arrays in one file?): join them into one array, or use JSON Lines")
        source = f"{p}:{line}"
        while True:
            try:
                record, end = decoder.raw_decode(w.text, pos)
                break
            except json.JSONDecodeError as exc:
                if len(w.text) - pos <= limit and (shift := w.more(pos)) >= 0:
                    pos -= shift
                    continue  # the record is not complete in the buffer yet
                if not w.done:
                    raise DataError(source, None, f"a record over data.max_record_bytes={limit:,}, or invalid JSON "
                                                  "there; raise the limit if the record is meant to be this large") from None
                # Inside an array one broken record breaks the rest of the file: stop here, whatever on_error says.
                line, col = w.at(exc.pos)
                raise DataError(f"{p}:{line}", None, f"invalid JSON: {exc.msg} (column {col})") from None
            except (RecursionError, ValueError) as exc:  # valid JSON Python will not hold: step over it, read on
                problem = "nested too deeply" if isinstance(exc, RecursionError) else _refusal(exc)
                end, resume, depth = _value_end(w.text, pos, 0)
                while end is None and len(w.text) - pos <= limit and (shift := w.more(pos)) >= 0:
                    pos, resume = pos - shift, resume - shift
                    end, resume, depth = _value_end(w.text, resume, depth)
                if end is None:
                    raise DataError(source, None, f"invalid JSON: {problem}") from None
                record = DataError(source, None, f"invalid JSON: {problem}")
                break
        text = w.text
        if isinstance(record, DataError):
            yield source, record
        elif end - pos > limit // 4 and (size := len(text[pos:end].encode("utf-8", "surrogatepass"))) > limit:
            yield source, _too_big(source, size, limit)
        elif not isinstance(record, dict):
            yield source, DataError(source, None, f"expected a JSON object, got {type(record).__name__}")
        else:
            bad = _SURROGATE_ESCAPE.search(text, pos, end) and _lone_surrogate(record)
            yield source, (DataError(source, *bad) if bad else record)
        pos = end


def _iter_csv(p: Path, f: IO[bytes], limit: int, tell: Callable[[int], Any]) -> Iterator[RecordItem]:
    # The module's default cell limit (128 KiB) would stop a long answer: cells may be as long as a record may.
    csv.field_size_limit(max(csv.field_size_limit(), limit))
    # Lines end at \n / \r only (newline=""): U+2028 or \x85 inside a cell is text, as a spreadsheet wrote it.
    # strict: a quote left open runs to the end of the file instead of silently taking the rows after it.
    reader = csv.DictReader((line for _, text in _text_blocks(p, f, tell) for line in io.StringIO(text, newline="")),
                            strict=True)
    start = 1  # a row is named by the line it starts on (quoted newlines make it span several)
    try:
        if reader.fieldnames is None:  # an empty file (reading the header also makes line_num count from row 1)
            return
        start = reader.line_num + 1
        for row in reader:
            source = f"{p}:{start}"
            start = reader.line_num + 1
            if None in row:
                yield source, DataError(source, None, f"more cells than the {len(reader.fieldnames or [])} header columns")
                continue
            # a short row leaves its last cells None: absent, as a null is (`absent_nulls`)
            yield source, {k: v for k, v in row.items() if v is not None}
    except csv.Error as exc:  # the reader cannot find the next row after this: stop, whatever on_error says
        raise DataError(f"{p}:{start}", None, f"invalid CSV: {exc}") from None


def _iter_txt(p: Path, f: IO[bytes], limit: int, tell: Callable[[int], Any]) -> Iterator[RecordItem]:
    for source, text in _raw_lines(p, f, limit, tell):
        yield source, text if isinstance(text, DataError) else {"text": text}


def absent_nulls(value: Any) -> Any:
    """Arrow tables (Parquet, the hub) give every row every column and every struct every field: there, a null
    means the record does not have that field, as if it were missing from JSON. Null items of a list stay."""
    if isinstance(value, dict):
        return {k: absent_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [absent_nulls(v) for v in value]
    return value


def _iter_parquet(p: Path, tell: Callable[[int], Any]) -> Iterator[RecordItem]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    unreadable = (pa.ArrowException, OSError, ValueError)  # bad magic, thrift, pages, UTF-8 (pyarrow's own types)
    try:
        parquet = pq.ParquetFile(p)
        rows = parquet.metadata.num_rows
        batches = parquet.iter_batches(batch_size=1024)
    except unreadable as exc:
        raise DataError(str(p), None, f"not a readable Parquet file ({_first_line(exc)}): check that it was copied "
                                      "whole, or write it again") from None
    size, told, row = p.stat().st_size, 0, 0
    while True:
        try:
            batch = next(batches, None)
            records = [] if batch is None else batch.to_pylist()
        except unreadable as exc:
            raise DataError(f"{p}:row {row + 1}", None, f"the Parquet file cannot be read from this row on "
                                                        f"({_first_line(exc)}): check that it was copied whole, or "
                                                        "write it again") from None
        if batch is None:
            tell(size - told)
            return
        for record in records:
            row += 1
            yield f"{p}:row {row}", absent_nulls(record)
        if rows:
            now = size * min(row, rows) // rows
            tell(now - told)
            told = now


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


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
        yield f"{repo_id}[{split}]:row {i}", absent_nulls(dict(row))
