"""On-disk columnar storage for records and samples: Arrow IPC files, written in batches, read memory-mapped.

Nothing here holds a whole dataset in Python objects: writers flush every `batch_rows` rows, readers map the files
and build one row's Python objects only when it is asked for. A million conversations cost disk, not RAM.
"""

from __future__ import annotations

import bisect
import itertools
import json
import mmap
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, Optional, TypeVar

import numpy as np
import pyarrow as pa

from ember.data.conversation import Conversation, Message
from ember.data.render import Encoded

T = TypeVar("T")

CONVERSATION_SCHEMA = pa.schema([
    ("source", pa.string()),
    ("messages", pa.list_(pa.struct([
        ("role", pa.string()),
        ("content", pa.string()),
        ("train", pa.bool_()),
        ("weight", pa.float64()),
        ("tool_calls", pa.string()),  # JSON, or null
    ]))),
    ("tools", pa.string()),  # JSON, or null
    ("meta", pa.string()),  # JSON
])
TEXT_SCHEMA = pa.schema([("text", pa.string())])
TOKENS_SCHEMA = pa.schema([("input_ids", pa.list_(pa.int32()))])
SAMPLE_SCHEMA = pa.schema([
    ("source", pa.string()),
    ("input_ids", pa.list_(pa.int32())),
    ("labels", pa.list_(pa.int32())),
    ("weights", pa.list_(pa.float32())),  # null unless some token has a weight other than 0 or 1
    ("length", pa.int32()),
    ("trained", pa.int32()),
    ("turns_dropped", pa.int32()),
    ("truncated", pa.bool_()),
])


def conversation_row(conv: Conversation) -> dict[str, Any]:
    return {
        "source": conv.source,
        "messages": [{"role": m.role, "content": m.content, "train": m.train, "weight": float(m.weight),
                      "tool_calls": json.dumps(m.tool_calls, ensure_ascii=False) if m.tool_calls else None}
                     for m in conv.messages],
        "tools": json.dumps(conv.tools, ensure_ascii=False) if conv.tools is not None else None,
        "meta": json.dumps(conv.meta, ensure_ascii=False, default=str),
    }


def row_conversation(row: dict[str, Any]) -> Conversation:
    messages = [Message(m["role"], m["content"], m["train"], m["weight"],
                        json.loads(m["tool_calls"]) if m["tool_calls"] else None) for m in row["messages"]]
    tools = json.loads(row["tools"]) if row["tools"] is not None else None
    return Conversation(messages, row["source"], tools, json.loads(row["meta"]))


def sample_row(enc: Encoded) -> dict[str, Any]:
    return {"source": enc.source, "input_ids": enc.input_ids, "labels": enc.labels, "weights": enc.weights,
            "length": len(enc.input_ids), "trained": enc.trained_tokens, "turns_dropped": enc.turns_dropped,
            "truncated": enc.truncated}


def row_sample(row: dict[str, Any]) -> Encoded:
    return Encoded(row["input_ids"], row["labels"], row["source"], row["weights"], row["turns_dropped"],
                   row["truncated"])


class ArrowWriter:
    """Append rows to one Arrow IPC stream file, a batch at a time."""

    def __init__(self, path: Path, schema: pa.Schema, batch_rows: int = 1024):
        self.path, self.schema, self.batch_rows = Path(path), schema, batch_rows
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._sink = pa.OSFile(str(self.path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, schema)
        self._rows: list[dict[str, Any]] = []
        self.count = 0

    def write(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        if len(self._rows) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        if self._rows:
            # Column by column: several times faster than from_pylist for long lists of token ids.
            arrays = [_column([row[f.name] for row in self._rows], f.type) for f in self.schema]
            self._writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=self.schema))
            self.count += len(self._rows)
            self._rows = []

    def close(self) -> None:
        self.flush()
        self._writer.close()
        self._sink.close()

    def __enter__(self) -> "ArrowWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_FLAT_LISTS = {pa.list_(pa.int32()): np.int32, pa.list_(pa.float32()): np.float32}


def _column(values: list, type_: pa.DataType) -> pa.Array:
    """One column of a batch. Lists of numbers without nulls (token ids, labels) are built from one flat numpy array and
    their offsets: a third quicker than converting each Python list, and these columns are most of what is written."""
    dtype = _FLAT_LISTS.get(type_)
    if dtype is None or any(v is None for v in values):
        return pa.array(values, type=type_)
    offsets = np.fromiter(itertools.accumulate(map(len, values), initial=0), dtype=np.int64, count=len(values) + 1)
    if offsets[-1] > np.iinfo(np.int32).max:  # a list array's offsets are int32
        return pa.array(values, type=type_)
    flat = np.fromiter(itertools.chain.from_iterable(values), dtype=dtype, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat), type=type_)


def take_rows(table: pa.Table, rows: Sequence[int],
              done: Optional[Callable[[pa.RecordBatch], None]] = None) -> list[dict[str, Any]]:
    """table.take(rows).to_pylist(), batch by batch: Table.take first concatenates every chunk of a nested column
    into one array (a copy of the whole table: its RSS grows with the dataset), taking from each record batch does
    not. `done(batch)` is called once each batch has given its rows (e.g. `MappedTable.release`)."""
    batches = table.to_batches()
    starts = list(itertools.accumulate((b.num_rows for b in batches), initial=0))
    order = sorted(range(len(rows)), key=rows.__getitem__)
    out: list[Any] = [None] * len(rows)
    i = 0
    while i < len(order):
        b = bisect.bisect_right(starts, rows[order[i]]) - 1
        j = i
        while j < len(order) and rows[order[j]] < starts[b + 1]:
            j += 1
        part = batches[b].take(pa.array([rows[order[k]] - starts[b] for k in range(i, j)])).to_pylist()
        for k, row in zip(range(i, j), part, strict=True):
            out[order[k]] = row
        if done is not None:
            done(batches[b])
        i = j
    return out


def read_table(paths: Sequence[Path], schema: pa.Schema) -> pa.Table:
    """The files' rows as one table whose buffers are memory-mapped (no copy into RAM)."""
    tables = [pa.ipc.open_stream(pa.memory_map(str(p))).read_all() for p in paths]
    return pa.concat_tables(tables) if tables else schema.empty_table()


FAULT_AROUND = 64 * 1024  # Linux maps this much around a faulted file page (fault_around_bytes, its default)


class MappedTable:
    """The files' rows as one memory-mapped table (as `read_table`), whose pages a reader can hand back.

    Reading scattered rows faults in file pages all over the map (the kernel maps up to 64 KiB around each touched
    page): an encoding worker taking shuffled rows held about the whole records file resident (RssFile 128 MB at
    100k conversations, 369 MB at 300k; bench/data_scale.py). Those pages are clean copies of the file;
    `release(batch)` drops the batch's pages from this process (MADV_DONTNEED: they stay in the page cache, and a
    later read maps them again), so what a reader holds stays about one record batch whatever the file's size
    (worker RssFile 23 MB at 100k, 300k and 1M conversations)."""

    def __init__(self, paths: Sequence[Path], schema: pa.Schema):
        self._maps: list[tuple[mmap.mmap, int, int]] = []  # (map, address of its first byte, size)
        tables = []
        for path in paths:
            with open(path, "rb") as f:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            buffer = pa.py_buffer(mapped)  # zero-copy: the table's buffers point into the map
            base, size = buffer.address, buffer.size
            self._maps.append((mapped, base, size))
            reader = pa.ipc.open_stream(buffer)
            batches, done = [], 0
            for batch in reader:  # reading a batch faults in its header: hand that back as the reading goes
                batches.append(batch)
                span = _span(batch)
                if span is not None:  # up to the window the batch ends in, which the next header may touch again
                    end = max(done, span[1] // FAULT_AROUND * FAULT_AROUND - base)
                    _dontneed(mapped, done, end - done)
                    done = end
            _dontneed(mapped, done, size - done)
            tables.append(pa.Table.from_batches(batches, schema=reader.schema))
        self.table = pa.concat_tables(tables) if tables else schema.empty_table()

    def release(self, batch: pa.RecordBatch) -> None:
        span = _span(batch)
        if span is None:
            return
        low, high = span
        for mapped, base, size in self._maps:
            if base <= low < base + size:
                # A fault maps the whole window (aligned in virtual addresses) around the page, neighbours' bytes
                # too: hand back whole windows, or every batch boundary would leave up to a window behind.
                start = max(base, low // FAULT_AROUND * FAULT_AROUND)
                end = min(base + size, -(-high // FAULT_AROUND) * FAULT_AROUND)
                _dontneed(mapped, start - base, end - start)
                return


def _span(batch: pa.RecordBatch) -> Optional[tuple[int, int]]:
    """The addresses of a record batch's first and past its last byte (its buffers lie together in an IPC file)."""
    spans = [(b.address, b.size) for column in batch.columns for b in column.buffers() if b is not None and b.size]
    return (min(a for a, _ in spans), max(a + n for a, n in spans)) if spans else None


def _dontneed(mapped: mmap.mmap, start: int, length: int) -> None:
    if hasattr(mmap, "MADV_DONTNEED") and length > 0:  # not on Windows: there the pages simply stay mapped
        mapped.madvise(mmap.MADV_DONTNEED, start, length)


class Rows(Generic[T]):
    """A read-only sequence over Arrow files: `rows[i]` builds one item with `convert(row dict)`."""

    def __init__(self, paths: Sequence[Path], schema: pa.Schema, convert: Callable[[dict[str, Any]], T],
                 keep: Optional[object] = None):
        self.paths = [Path(p) for p in paths]
        self.schema = schema
        self.convert = convert
        self._keep = keep  # e.g. the temporary directory the files live in: deleted when this goes
        self.table = read_table(self.paths, schema)

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.convert(self.table.slice(index, 1).to_pylist()[0])

    def __iter__(self) -> Iterator[T]:
        for batch in self.table.to_batches(max_chunksize=256):
            for row in batch.to_pylist():
                yield self.convert(row)

    def __bool__(self) -> bool:
        return len(self) > 0

    def take(self, indices: Sequence[int]) -> list[T]:
        return [self.convert(r) for r in self.table.take(pa.array(indices, type=pa.int64())).to_pylist()]

    def column(self, name: str) -> list[Any]:
        return self.table.column(name).to_pylist()

    # Pickled (e.g. into a DataLoader worker) as file paths; the copy maps the same files and owns nothing.
    def __getstate__(self) -> dict[str, Any]:
        return {"paths": self.paths, "schema": self.schema, "convert": self.convert}

    def __setstate__(self, state: dict[str, Any]) -> None:
        Rows.__init__(self, state["paths"], state["schema"], state["convert"])


class Samples(Rows[Encoded]):
    """Training samples (ids, labels, weights) stored in Arrow files; items are `Encoded`."""

    def __init__(self, paths: Sequence[Path], keep: Optional[object] = None):
        super().__init__(paths, SAMPLE_SCHEMA, row_sample, keep)

    def lengths(self) -> list[int]:
        return self.column("length")

    def __getstate__(self) -> dict[str, Any]:
        return {"paths": self.paths}

    def __setstate__(self, state: dict[str, Any]) -> None:
        Samples.__init__(self, state["paths"])
