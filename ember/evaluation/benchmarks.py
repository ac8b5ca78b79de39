"""Multiple-choice benchmarks (CMMLU, C-Eval, MMLU): read the local CSV layouts or the hub datasets into `Subject`s.

Local layouts, all read by one row parser that looks at the header:
  CMMLU   <dir>/{dev,test}/<subject>.csv          `,Question,A,B,C,D,Answer` (unnamed index column, letter answer)
  C-Eval  <dir>/{dev,val}/<subject>_<split>.csv   `id,question,A,B,C,D,answer[,explanation]` (+ subject_mapping.json)
  MMLU    <dir>/{dev,test}/<subject>_<split>.csv  HF `cais/mmlu` layout: `question,choice0..3,answer` (answer 0–3)
          or the original hendrycks CSVs: no header, `question,A,B,C,D,letter` (also under <dir>/data/{dev,test}).
A source that is not a local directory is read as a hub id with `datasets.load_dataset(hub_id, subject, split=...)`.
"""

from __future__ import annotations

import csv
import difflib
import functools
import io
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from ember.errors import EmberError

LETTERS = "ABCDEFGH"
CATEGORIES = ("STEM", "Humanities", "Social Science", "Other", "China specific")


@dataclass(frozen=True)
class Question:
    question: str
    choices: tuple[str, ...]
    answer: int  # index into `choices`
    id: str = ""
    explanation: str = ""

    @property
    def gold(self) -> str:
        return LETTERS[self.answer]


@dataclass
class Subject:
    name: str
    categories: tuple[str, ...]
    display: str  # the subject as named in the prompt header (Chinese name for the Chinese benchmarks)
    dev: list[Question] = field(default_factory=list)  # the k-shot pool
    questions: list[Question] = field(default_factory=list)  # the evaluated split


@dataclass(frozen=True)
class BenchSpec:
    name: str
    language: str  # "zh" or "en": prompt wording and answer cue
    eval_split: str
    dev_split: str
    hub_id: str


BENCHMARKS: dict[str, BenchSpec] = {
    "cmmlu": BenchSpec("cmmlu", "zh", "test", "dev", "haonan-li/cmmlu"),
    "ceval": BenchSpec("ceval", "zh", "val", "dev", "ceval/ceval-exam"),
    "mmlu": BenchSpec("mmlu", "en", "test", "dev", "cais/mmlu"),
}


def spec_for(name: str) -> BenchSpec:
    key = name.lower().replace("-", "")
    if key not in BENCHMARKS:
        raise EmberError(f"unknown benchmark '{name}': choose one of {', '.join(BENCHMARKS)} (or gsm8k)")
    return BENCHMARKS[key]


@functools.lru_cache(maxsize=None)
def subject_table(benchmark: str) -> dict[str, dict[str, Any]]:
    text = resources.files("ember.evaluation").joinpath("subjects.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)[benchmark]


def load_benchmark(
    name: str, source: Optional[str] = None, subjects: Optional[Iterable[str]] = None, limit: Optional[int] = None
) -> list[Subject]:
    """Every requested subject with its dev (k-shot) pool and its first `limit` evaluated questions."""
    spec = spec_for(name)
    source = source or spec.hub_id
    local = Path(source).expanduser()
    if local.is_dir():
        loaded = _load_local(spec, local, subjects)
    elif Path(source).suffix or source.startswith((".", "/", "~")):
        raise EmberError(f"{name} data not found at {source}: give the directory holding dev/ and "
                         f"{spec.eval_split}/ (or a hub id such as {spec.hub_id})")
    else:
        loaded = _load_hub(spec, source, subjects)
    if limit is not None:
        for subject in loaded:
            subject.questions = subject.questions[:limit]
    return loaded


def _load_local(spec: BenchSpec, root: Path, wanted: Optional[Iterable[str]]) -> list[Subject]:
    if not (root / spec.eval_split).is_dir() and (root / "data" / spec.eval_split).is_dir():
        root = root / "data"  # the original MMLU tarball nests its splits under data/
    eval_dir = root / spec.eval_split
    if not eval_dir.is_dir():
        raise EmberError(f"{root} has no {spec.eval_split}/ folder: expected the {spec.name} layout "
                         f"<dir>/{spec.dev_split}/*.csv and <dir>/{spec.eval_split}/*.csv")
    files = {_subject_of(p, spec.eval_split): p for p in sorted(eval_dir.glob("*.csv"))}
    names = _select(spec, list(files), wanted, str(eval_dir))
    mapping = _local_mapping(root)
    out = []
    for name in names:
        dev_file = _find_split_file(root / spec.dev_split, name, spec.dev_split)
        dev = read_questions(dev_file) if dev_file else []
        out.append(_subject(spec, name, dev, read_questions(files[name]), mapping))
    return out


def _load_hub(spec: BenchSpec, hub_id: str, wanted: Optional[Iterable[str]]) -> list[Subject]:
    from datasets import load_dataset

    names = _select(spec, list(subject_table(spec.name)), wanted, hub_id)
    out = []
    for name in names:
        try:
            dev_rows = load_dataset(hub_id, name, split=spec.dev_split)
            eval_rows = load_dataset(hub_id, name, split=spec.eval_split)
        except Exception as exc:  # noqa: BLE001 - datasets raises many types; the message is what matters
            raise EmberError(f"'{hub_id}' is not a local directory, and loading subject '{name}' from the hub "
                             f"failed ({exc}); pass the directory holding the CSVs instead") from exc
        dev = [question_from_row(dict(r), f"{hub_id}/{name}/{spec.dev_split}") for r in dev_rows]
        questions = [question_from_row(dict(r), f"{hub_id}/{name}/{spec.eval_split}") for r in eval_rows]
        out.append(_subject(spec, name, dev, questions, {}))
    return out


def _subject(spec: BenchSpec, name: str, dev: list[Question], questions: list[Question], mapping: dict) -> Subject:
    info = subject_table(spec.name).get(name, {})
    categories = tuple(info.get("categories", ["Other"]))
    display = info.get("zh") if spec.language == "zh" else None
    if name in mapping:  # C-Eval's own subject_mapping.json: [English name, Chinese name, category]
        categories, display = (mapping[name][2],), mapping[name][1]
    return Subject(name, categories, display or name.replace("_", " "), dev, questions)


def _local_mapping(root: Path) -> dict[str, list[str]]:
    for candidate in (root / "subject_mapping.json", root.parent / "subject_mapping.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text(encoding="utf-8"))
    return {}


def _select(spec: BenchSpec, available: list[str], wanted: Optional[Iterable[str]], where: str) -> list[str]:
    if not available:
        raise EmberError(f"no {spec.name} subjects found in {where}")
    if wanted is None:
        return available
    chosen = list(wanted)
    for name in chosen:
        if name not in available:
            close = difflib.get_close_matches(name, available, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; available: {', '.join(available[:8])}, ..."
            raise EmberError(f"{spec.name} has no subject '{name}' in {where}{hint}")
    return chosen


def _subject_of(path: Path, split: str) -> str:
    stem = path.stem
    return stem[: -len(split) - 1] if stem.endswith(f"_{split}") else stem


def _find_split_file(folder: Path, subject: str, split: str) -> Optional[Path]:
    for candidate in (folder / f"{subject}_{split}.csv", folder / f"{subject}.csv"):
        if candidate.is_file():
            return candidate
    return None


def read_questions(path: Path) -> list[Question]:
    text = path.read_text(encoding="utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return []
    header = [h.strip().lower() for h in rows[0]]
    if "question" in header:
        records = [dict(zip(header, row, strict=True)) for row in rows[1:] if row]
    else:  # original hendrycks MMLU: no header, question + choices + letter
        records = [{"question": r[0], "choices": r[1:-1], "answer": r[-1]} for r in rows if r]
    return [question_from_row(rec, f"{path}:{i + 2}") for i, rec in enumerate(records)]


def question_from_row(row: dict[str, Any], where: str) -> Question:
    """One question from a CSV row or a hub row, whichever of the known column layouts it uses."""
    row = {str(k).strip().lower(): v for k, v in row.items()}
    if "choices" in row:
        choices = [str(c) for c in row["choices"]]
    elif "choice0" in row:
        choices = [str(row[f"choice{i}"]) for i in range(len(LETTERS)) if f"choice{i}" in row]
    else:
        choices = [str(row[c.lower()]) for c in LETTERS if c.lower() in row]
    if len(choices) < 2 or "question" not in row or "answer" not in row:
        raise EmberError(f"{where}: expected a question, choices A–D (or choice0–3 / choices) and an answer; "
                         f"got columns {sorted(row)}")
    raw = str(row["answer"]).strip().upper()
    if raw.isdigit():
        answer = int(raw)
    elif len(raw) == 1 and raw in LETTERS:
        answer = LETTERS.index(raw)
    else:
        raise EmberError(f"{where}: answer '{row['answer']}' is neither a letter A–{LETTERS[len(choices) - 1]} nor an index")
    if not 0 <= answer < len(choices):
        raise EmberError(f"{where}: answer '{row['answer']}' is out of range for {len(choices)} choices")
    ident = row.get("id", row.get("", ""))
    return Question(str(row["question"]), tuple(choices), answer, str(ident), str(row.get("explanation") or ""))
