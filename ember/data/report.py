"""What happened to the data: counts, skip reasons, answer tokens kept and lost, lengths, lints — printed at the end
and saved as JSON. Worker processes each fill their own report; `merge` adds them up."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from dataclasses import asdict, dataclass, field
from typing import Any

from ember.data.render import Encoded

KEEP_LISTED = 1000  # skipped records / warnings listed by name; beyond that they are only counted


@dataclass
class DataReport:
    """Every record read is accounted for: `read + repeated == kept_records + skipped + dropped` (see `unaccounted`)."""

    read: int = 0
    kept: int = 0  # samples (train + eval); truncation: split makes several of one record, pt packs many in a block
    kept_records: int = 0  # records that became training data (a record drawn twice by samples/ratio counts twice)
    skipped: dict[str, int] = field(default_factory=dict)  # reason → count
    skipped_records: list[dict[str, str]] = field(default_factory=list)  # {source, reason}, the first KEEP_LISTED
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_nothing_to_train: int = 0
    turns_dropped: int = 0
    split_into: int = 0  # extra samples made by truncation: split
    dropped_identical_pairs: int = 0  # preference pairs whose two answers encode to the same tokens
    dropped_empty_answers: int = 0  # preference pairs / kto examples with an empty answer
    dropped_empty_text: int = 0  # pt documents with no text
    not_sampled: int = 0  # valid records left out by a dataset entry's samples / ratio (below its size)
    repeated: int = 0  # extra draws of valid records by samples / ratio (above the entry's size)
    train_samples: int = 0
    eval_samples: int = 0
    total_tokens: int = 0
    trained_tokens: int = 0
    answer_tokens: int = 0  # trained tokens the conversations hold before any truncation
    answer_tokens_lost: dict[str, int] = field(default_factory=dict)  # reason → tokens not trained
    length_percentiles: dict[str, int] = field(default_factory=dict)
    warning_count: int = 0
    warnings: list[str] = field(default_factory=list)  # the first KEEP_LISTED

    def skip(self, source: str, reason: str, group: str | None = None) -> None:
        """Record one skipped (unreadable or invalid) record; the summary counts skips by `group` (default: the
        full reason)."""
        key = group or reason
        self.skipped[key] = self.skipped.get(key, 0) + 1
        self.skip_sample(source, reason)

    def skip_sample(self, source: str, reason: str) -> None:
        if len(self.skipped_records) < KEEP_LISTED:
            self.skipped_records.append({"source": source, "reason": reason})

    def warn(self, message: str) -> None:
        self.warning_count += 1
        if len(self.warnings) < KEEP_LISTED:
            self.warnings.append(message)

    def count_answers(self, total: int, lost: dict[str, int]) -> None:
        self.answer_tokens += total
        for reason, tokens in lost.items():
            self.answer_tokens_lost[reason] = self.answer_tokens_lost.get(reason, 0) + tokens

    def add_sample(self, sample: Encoded) -> None:
        self.total_tokens += len(sample.input_ids)
        self.trained_tokens += sample.trained_tokens
        self.truncated += int(sample.truncated)
        self.turns_dropped += sample.turns_dropped

    def merge(self, other: "DataReport") -> None:
        """Add another report's counts (a worker's, a split's) to this one."""
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, int):
                setattr(self, f.name, mine + theirs)
            elif isinstance(mine, list):
                mine.extend(theirs[: max(0, KEEP_LISTED - len(mine))])
            elif f.name != "length_percentiles":
                for key, value in theirs.items():
                    mine[key] = mine.get(key, 0) + value

    def set_lengths(self, lengths: list[int]) -> None:
        lengths = sorted(lengths)
        if lengths:
            self.length_percentiles = {f"p{q}": lengths[min(len(lengths) - 1, int(q / 100 * len(lengths)))]
                                       for q in (0, 50, 90, 99, 100)}

    @property
    def dropped(self) -> int:
        """Valid records that did not become training data, each for a counted reason."""
        return (self.dropped_too_long + self.dropped_nothing_to_train + self.dropped_identical_pairs
                + self.dropped_empty_answers + self.dropped_empty_text + self.not_sampled)

    @property
    def unaccounted(self) -> int:
        """Records neither kept, skipped nor dropped: 0 unless Ember lost one (the fuzz tests hold it there)."""
        return self.read + self.repeated - self.kept_records - sum(self.skipped.values()) - self.dropped

    @property
    def trained_share(self) -> float:
        return self.trained_tokens / self.total_tokens if self.total_tokens else 0.0

    @property
    def answer_share_kept(self) -> float:
        return 1 - sum(self.answer_tokens_lost.values()) / self.answer_tokens if self.answer_tokens else 1.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dropped"] = self.dropped
        out["trained_share"] = round(self.trained_share, 4)
        out["answer_tokens_kept"] = self.answer_tokens - sum(self.answer_tokens_lost.values())
        return out

    def summary_rows(self) -> list[tuple[str, str]]:
        skipped = sum(self.skipped.values())
        lost = sum(self.answer_tokens_lost.values())
        rows = [
            ("records read", str(self.read)),
            ("samples kept", f"{self.kept} (train {self.train_samples}, eval {self.eval_samples})"),
            ("skipped (bad records)", str(skipped) + (f" — {dict(Counter(self.skipped))}" if skipped else "")),
            ("dropped: too long", str(self.dropped_too_long)),
            ("dropped: nothing to train", str(self.dropped_nothing_to_train)),
            ("truncated", str(self.truncated)),
            ("turns dropped by truncation", str(self.turns_dropped)),
        ]
        if self.split_into:
            rows.append(("extra samples from split conversations", str(self.split_into)))
        if self.dropped_identical_pairs:
            rows.append(("dropped: identical answers", str(self.dropped_identical_pairs)))
        if self.dropped_empty_answers:
            rows.append(("dropped: empty answer", str(self.dropped_empty_answers)))
        if self.answer_tokens:
            detail = ", ".join(f"{reason}: {n}" for reason, n in self.answer_tokens_lost.items() if n)
            rows.append(("answer tokens kept", f"{self.answer_tokens - lost} of {self.answer_tokens} "
                                               f"({self.answer_share_kept:.1%})" + (f" — lost: {detail}" if detail else "")))
        rows += [
            ("length percentiles (tokens)", ", ".join(f"{k}={v}" for k, v in self.length_percentiles.items())),
            ("tokens / trained tokens", f"{self.total_tokens} / {self.trained_tokens} ({self.trained_share:.1%})"),
            ("warnings", str(self.warning_count)),
        ]
        return rows


def skip_summary(report: DataReport, first: int = 5) -> list[str]:
    """What a person must see after preparing data: how many records were skipped or dropped, by reason, and the
    first few of them by file:line. Empty when nothing was lost."""
    lines = []
    skipped = sum(report.skipped.values())
    if skipped:
        reasons = ", ".join(f"{reason} ({n})" for reason, n in sorted(report.skipped.items(), key=lambda kv: -kv[1]))
        lines.append(f"skipped {skipped} of {report.read} records: {reasons}")
    if report.dropped_too_long:
        lines.append(f"dropped {report.dropped_too_long} record(s) longer than max_length")
    if report.dropped_nothing_to_train:
        lines.append(f"dropped {report.dropped_nothing_to_train} record(s) with nothing to train")
    for count, why in ((report.dropped_identical_pairs, "whose two answers are identical"),
                       (report.dropped_empty_answers, "with an empty answer"),
                       (report.dropped_empty_text, "with no text"),
                       (report.not_sampled, "left out by samples / ratio")):
        if count:
            lines.append(f"dropped {count} record(s) {why}")
    lines += [f"  {r['source']}: {r['reason']}" for r in report.skipped_records[:first]]
    more = len(report.skipped_records) - first
    if more > 0:
        lines.append(f"  … {more} more in the data report")
    if lines:
        repeated = f" + {report.repeated} drawn again" if report.repeated else ""
        lines.append(f"records: {report.read} read{repeated} = {report.kept_records} kept + {skipped} skipped + "
                     f"{report.dropped} dropped")
    return lines


def save_report(report: DataReport, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")


class NothingToTrain(Exception):
    """Raised with the data report when processing left no trainable token (the caller writes the report, then
    raises the DataError it carries)."""

    def __init__(self, error: Exception, report: DataReport):
        super().__init__(str(error))
        self.error, self.report = error, report


def tokenizer_warnings(tokenizer) -> list[str]:
    """Warnings about the tokenizer itself, once per dataset."""
    out: list[str] = []
    if tokenizer.pad_token is None:
        out.append("tokenizer has no pad token")
    if tokenizer.eos_token is None:
        out.append("tokenizer has no eos token: generation cannot stop")
    return out
