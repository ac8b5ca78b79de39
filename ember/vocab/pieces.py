"""A pieces folder: what `ember vocab train` learns and `ember vocab extend` merges.

`pieces.jsonl` holds one piece a line, highest priority first (the trainer's merge order), as raw bytes in hex
plus the text where the bytes are whole UTF-8 characters (for people reading the file). Bytes rather than a
model's spelling let pieces learned byte-level extend a SentencePiece-style tokenizer and the other way round.
`meta.json` records how the pieces were learned.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ember.errors import ConfigError

PIECES_FILE = "pieces.jsonl"
META_FILE = "meta.json"


def piece_text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def save_pieces(out: str | Path, pieces: list[bytes], meta: dict[str, Any]) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / PIECES_FILE, "w", encoding="utf-8") as f:
        for data in pieces:
            f.write(json.dumps({"bytes": data.hex(), "text": piece_text(data)}, ensure_ascii=False) + "\n")
    (out / META_FILE).write_text(json.dumps({**meta, "pieces": len(pieces)}, ensure_ascii=False, indent=2) + "\n")
    return out


def load_pieces(path: str | Path) -> list[bytes]:
    p = Path(path)
    file = p / PIECES_FILE if p.is_dir() else p
    if not file.is_file():
        raise ConfigError(f"--pieces {path}: no {PIECES_FILE} there; create it with `ember vocab train --out {path}`")
    pieces = []
    with open(file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                pieces.append(bytes.fromhex(json.loads(line)["bytes"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{file}:{lineno}: not a piece record ({exc}); expected {{\"bytes\": hex}}") from None
    if not pieces:
        raise ConfigError(f"{file} holds no pieces")
    return pieces


def load_meta(path: str | Path) -> dict[str, Any]:
    file = Path(path) / META_FILE
    return json.loads(file.read_text()) if file.is_file() else {}
