"""What happened to the data: counts, skip reasons, lengths, lints — printed at the end and saved as JSON."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from ember.data.render import IGNORE_INDEX, Encoded


@dataclass
class DataReport:
    read: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason → count
    skipped_records: list[dict[str, str]] = field(default_factory=list)  # {source, reason}
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_nothing_to_train: int = 0
    turns_dropped: int = 0
    train_samples: int = 0
    eval_samples: int = 0
    total_tokens: int = 0
    trained_tokens: int = 0
    length_percentiles: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def skip(self, source: str, reason: str, group: str | None = None) -> None:
        """Record one skipped record; the summary counts skips by `group` (default: the full reason)."""
        key = group or reason
        self.skipped[key] = self.skipped.get(key, 0) + 1
        self.skipped_records.append({"source": source, "reason": reason})

    @property
    def trained_share(self) -> float:
        return self.trained_tokens / self.total_tokens if self.total_tokens else 0.0

    def add_samples(self, samples: list[Encoded]) -> None:
        lengths = sorted(len(s.input_ids) for s in samples)
        self.total_tokens += sum(lengths)
        self.trained_tokens += sum(s.trained_tokens for s in samples)
        if lengths:
            self.length_percentiles = {f"p{q}": lengths[min(len(lengths) - 1, int(q / 100 * len(lengths)))]
                                       for q in (0, 50, 90, 99, 100)}
        self.truncated += sum(1 for s in samples if s.truncated)
        self.turns_dropped += sum(s.turns_dropped for s in samples)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["trained_share"] = round(self.trained_share, 4)
        return out

    def summary_rows(self) -> list[tuple[str, str]]:
        skipped = sum(self.skipped.values())
        rows = [
            ("records read", str(self.read)),
            ("samples kept", f"{self.kept} (train {self.train_samples}, eval {self.eval_samples})"),
            ("skipped (bad records)", str(skipped) + (f" — {dict(Counter(self.skipped))}" if skipped else "")),
            ("dropped: too long", str(self.dropped_too_long)),
            ("dropped: nothing to train", str(self.dropped_nothing_to_train)),
            ("truncated", str(self.truncated)),
            ("turns dropped by truncation", str(self.turns_dropped)),
            ("length percentiles (tokens)", ", ".join(f"{k}={v}" for k, v in self.length_percentiles.items())),
            ("tokens / trained tokens", f"{self.total_tokens} / {self.trained_tokens} ({self.trained_share:.1%})"),
            ("warnings", str(len(self.warnings))),
        ]
        return rows


def lint(samples: list[Encoded], tokenizer, stop_token_ids: list[int]) -> list[str]:
    """Warnings a person should look at before training; each names the sample's file:line."""
    out: list[str] = []
    if tokenizer.pad_token is None:
        out.append("tokenizer has no pad token")
    if tokenizer.eos_token is None:
        out.append("tokenizer has no eos token: generation cannot stop")
    pad = tokenizer.pad_token_id
    for s in samples:
        out.extend(s.warnings)
        if pad is not None and pad not in stop_token_ids and pad in (x for x in s.labels if x != IGNORE_INDEX):
            out.append(f"{s.source}: the pad token ({tokenizer.pad_token}) is trained in the labels")
    return out
