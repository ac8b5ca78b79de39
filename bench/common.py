"""Helpers shared by the bench scripts (run them as `python bench/<name>.py` from the repository root)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    """$EMBER_SHARED_DATA, else ../shared/data next to the checkout; exits with a message when neither exists."""
    env = os.environ.get("EMBER_SHARED_DATA")
    path = Path(env) if env else ROOT.parent / "shared" / "data"
    if not (path / "README.md").is_file():
        sys.exit(f"shared data not found at {path} (set EMBER_SHARED_DATA)")
    return path


def finish_table(lines: list[str], out: str | None) -> None:
    """Close a bench's table with the load average at its end, print it, and write it to `out` when given."""
    lines.append(f"# load average at end {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if out:
        Path(out).write_text(text)
