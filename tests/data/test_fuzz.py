"""Fuzzing the data path: no input makes Ember show a traceback.

A fixed corpus (tests/data/fuzz_corpus.py: one malformed or awkward kind per case, every reader, every format) and
property-based input (hypothesis: any JSON value in any field of any format, random damage to valid files, random
conversations through the tokenizer) hold these promises:
- only an EmberError escapes (a DataError for data), and `ember data export` exits 0 or 2 with one line;
- every message about a record names its file:line (file:row N for Parquet);
- with on_error: skip, every record read is accounted for: read (+ repeated) == kept + skipped + dropped.
The property tests are sized for CI (seconds); EMBER_FUZZ_SCALE=20 runs twenty times as many examples.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ember.data.pipeline import read_dataset
from ember.data.report import DataReport
from ember.errors import DataError
from tests.data.conftest import run_config
from tests.data.fuzz_corpus import CORPUS, FUZZ_DATA, GOOD, STAGE, Case, parquet_bytes

LOCATION = re.compile(r":(\d+|row \d+)$")  # how a record's source ends: file:line, or file:row N (Parquet)
SCALE = int(os.environ.get("EMBER_FUZZ_SCALE", "1"))
FORMATS = ["openai", "sharegpt", "alpaca", "firefly", "moss", "columns", "glaive", "text", "pairs", "kto"]


def _materialise(case: Case, root: Path) -> Path:
    """Write the case's files under root/<case name>; returns the dataset path."""
    for rel, content in case.files.items():
        target = root / case.name / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return root / case.name / case.dataset


def _read(path: Path, fmt_stage: str, on_error: str, fmt: str = "auto") -> tuple[DataReport, int]:
    """Read and convert one dataset entry (no tokenizer): (report, records kept)."""
    from ember.training.stages import STAGES

    cfg = run_config([{"path": str(path), "format": fmt}], stage=fmt_stage, **{**FUZZ_DATA, "on_error": on_error})
    report = DataReport()
    kept = read_dataset(cfg.data.datasets[0], cfg.data, STAGES[fmt_stage].recipe, report, lambda record: None)
    return report, kept


# -- the corpus -----------------------------------------------------------------------------------------------------
def test_the_corpus_covers_every_reader_and_format():
    assert len(CORPUS) >= 100 and len({c.name for c in CORPUS}) == len(CORPUS)
    assert {c.reader for c in CORPUS} == {"jsonl", "json", "csv", "txt", "parquet", "folder", "path"}
    assert {c.fmt for c in CORPUS} == set(FORMATS)
    assert {c.expect for c in CORPUS} == {"keep", "skip", "drop", "fatal"}


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_each_kind_is_kept_or_named_by_file_and_line(case, tmp_path):
    """Strict stops on the bad record naming file:line; skip goes on (a fatal kind stops both, naming the file and
    the line or row when there is one). Nothing else than a DataError ever escapes."""
    dataset = _materialise(case, tmp_path)
    named = f"{tmp_path / case.name / case.file}{case.where or ''}: "
    for on_error in ("strict", "skip"):
        try:
            report, kept = _read(dataset, case.stage, on_error)
        except DataError as error:
            assert case.expect == "fatal" or (case.expect == "skip" and on_error == "strict"), str(error)
            assert str(error).startswith(named), (str(error), named)
            assert "\n" not in str(error)
            continue
        assert case.expect in ("keep", "drop") or (case.expect == "skip" and on_error == "skip"), case.name
        assert report.read == kept + sum(report.skipped.values())
        if case.expect == "skip":
            assert [r["source"] for r in report.skipped_records] == [named[:-2]]


@pytest.mark.parametrize("stage", sorted({c.stage for c in CORPUS}))
def test_skip_mode_accounts_for_every_record(stage, tmp_path, prepare):
    """All readable kinds of one stage as one dataset per kind, prepared (rendered, tokenised, fitted) in skip mode:
    each bad record is skipped by its file:line, each drop is counted, the rest is kept, and nothing is lost."""
    cases = [c for c in CORPUS if c.stage == stage and c.expect != "fatal"]
    paths = [_materialise(case, tmp_path) for case in cases]
    cfg = run_config([{"path": str(p)} for p in paths], stage=stage, **{**FUZZ_DATA, "on_error": "skip"})
    prepared = prepare(cfg)
    report = prepared.data.report
    skipped = sorted(f"{tmp_path / c.name / c.file}{c.where}" for c in cases if c.expect == "skip")
    # skipped_records also lists some drops (too long, empty or identical answers): skips are those of a skip reason
    listed = sorted(r["source"] for r in report.skipped_records if DataError("", None, r["reason"]).reason in report.skipped)
    assert listed == skipped
    if stage == "sft":  # samples name their record: count them per case
        per_case = Counter(Path(s.source).relative_to(tmp_path).parts[0] for s in prepared.data.train)
        assert {c.name: per_case[c.name] for c in cases} == {c.name: c.kept for c in cases}
    assert report.kept_records == sum(c.kept for c in cases)
    assert report.dropped == sum(c.expect == "drop" for c in cases)
    assert sum(report.skipped.values()) == len(skipped)
    assert report.read == report.kept_records + sum(report.skipped.values()) + report.dropped
    assert report.unaccounted == 0 and report.repeated == 0


def test_ember_data_export_exit_codes_and_one_line_errors(tmp_path, capsys, smollm2_dir):
    from ember.cli import main

    by_name = {c.name: c for c in CORPUS}

    def export(names, on_error):
        paths = [_materialise(by_name[n], tmp_path) for n in names]
        cfg = {"stage": "sft", "data": {"datasets": [{"path": str(p)} for p in paths], **FUZZ_DATA,
                                        "on_error": on_error}}
        config = tmp_path / "run.yaml"
        config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        out = tmp_path / "out" / "samples.jsonl"
        code = main(["data", "export", str(config), "--out", str(out)])
        printed = capsys.readouterr()
        assert "Traceback" not in printed.out + printed.err
        return code, printed, out

    # skip: exit 0, every record accounted for in the printed summary and in the report
    names = ["not_json", "lone_surrogate", "deep_arrays", "too_long", "csv_extra_cells", "parquet_content_null",
             "array_deep", "weight_nan"]
    code, printed, out = export(names, "skip")
    assert code == 0
    report = json.loads(out.with_name("samples.jsonl.report.json").read_text(encoding="utf-8"))
    assert (report["read"], report["kept_records"], sum(report["skipped"].values()), report["dropped"]) == (24, 16, 7, 1)
    assert printed.out.splitlines()[-2] == "records: 24 read = 16 kept + 7 skipped + 1 dropped"
    assert sum(1 for _ in out.open(encoding="utf-8")) == 16
    # strict: exit 2 and one line naming file:line; a file that cannot be read stops skip mode too
    for name, on_error in (("lone_surrogate", "strict"), ("huge_integer", "strict"), ("csv_unterminated_quote", "skip"),
                           ("parquet_damaged_page", "skip"), ("array_then_more", "skip")):
        case = by_name[name]
        code, printed, _ = export([name], on_error)
        assert code == 2
        assert printed.err.startswith(f"error: {tmp_path / case.name / case.file}{case.where}: ")
        assert printed.err.count("\n") == 1


# -- property-based: any value, anywhere ----------------------------------------------------------------------------
AWKWARD_TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", "\ud800", "a\udfffb", "<|im_end|>", "<|im_start|>assistant\n", "\x00", "\u2028",
                     "USER: x", "{", "[[", "\\u0000", "𝔘𝔫𝔦", "<image>", "<tool_call>"]),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | AWKWARD_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(AWKWARD_TEXT, inner, max_size=3),
    max_leaves=8,
)


def _paths(value, prefix=()):
    """Every place in a JSON value: (path, value) pairs, containers first."""
    yield prefix, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


@st.composite
def damaged_records(draw):
    """A good record of some format with one to three places replaced by any JSON value, or removed."""
    fmt = draw(st.sampled_from(FORMATS))
    record = json.loads(json.dumps(GOOD[fmt]))
    for _ in range(draw(st.integers(1, 3))):
        places = [p for p, _ in _paths(record) if p]
        if not places:
            break
        path = draw(st.sampled_from(places))
        parent = record
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JSON_VALUES)
    if draw(st.booleans()):
        record[draw(AWKWARD_TEXT)] = draw(JSON_VALUES)
    return fmt, record


@settings(max_examples=150 * SCALE, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damaged=damaged_records(), layout=st.sampled_from(["jsonl", "json"]))
def test_any_value_in_any_field_is_kept_or_that_records_error(damaged, layout, tmp_path):
    fmt, record = damaged
    good = json.dumps(GOOD[fmt], ensure_ascii=True)
    bad = json.dumps(record, ensure_ascii=True)  # lone surrogates become \ud800 escapes, NaN stays NaN
    path = tmp_path / f"f.{layout}"
    text = f"{good}\n{bad}\n{good}\n" if layout == "jsonl" else f"[{good},\n{bad},\n{good}]\n"
    path.write_text(text, encoding="utf-8")
    stage = STAGE.get(fmt, "sft")
    report, kept = _read(path, stage, "skip", fmt)
    assert report.read == 3 and kept + sum(report.skipped.values()) == 3 and kept >= 2
    assert [r["source"] for r in report.skipped_records] == ([] if kept == 3 else [f"{path}:2"])
    try:
        _read(path, stage, "strict", fmt)
    except DataError as error:
        assert kept == 2 and str(error).startswith(f"{path}:2: ")


def _valid_file(reader: str, tmp_path: Path) -> tuple[Path, str]:
    records = [GOOD["openai"], GOOD["openai"], GOOD["openai"]]
    path = tmp_path / f"data.{reader}"
    if reader == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif reader == "json":
        path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    elif reader == "csv":
        path.write_text("query,response\nHi,Hello.\n\"multi\nline\",\"a, b\"\nq,a\n", encoding="utf-8")
    elif reader == "txt":
        path.write_text("one document\nanother one\nthe last\n", encoding="utf-8")
    else:
        path.write_bytes(parquet_bytes(records))
    return path, "pt" if reader == "txt" else "sft"


@settings(max_examples=150 * SCALE, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reader=st.sampled_from(["jsonl", "json", "csv", "txt", "parquet"]),
       edits=st.lists(st.tuples(st.sampled_from(["cut", "insert", "overwrite"]), st.floats(0, 1),
                                st.binary(min_size=1, max_size=6)), min_size=1, max_size=3))
def test_damaged_files_never_traceback(reader, edits, tmp_path):
    """Cut, inserted or overwritten bytes anywhere in a valid file: a clean result that accounts for every record
    read, or one DataError naming the file (and its line or row when there is one)."""
    path, stage = _valid_file(reader, tmp_path)
    data = path.read_bytes()
    for op, where, blob in edits:
        at = int(where * len(data))
        data = data[:at] if op == "cut" else data[:at] + blob + data[at + (len(blob) if op == "overwrite" else 0):]
    path.write_bytes(data)
    try:
        report, kept = _read(path, stage, "skip")
    except DataError as error:
        assert str(error).startswith(f"{path}:") and "\n" not in str(error)
        return
    assert report.read == kept + sum(report.skipped.values())
    for record in report.skipped_records:
        assert record["source"].startswith(f"{path}:") and LOCATION.search(record["source"]), record


ROLES = st.sampled_from(["system", "user", "assistant", "tool"])
MESSAGES = st.lists(st.fixed_dictionaries({"role": ROLES, "content": AWKWARD_TEXT},
                                          optional={"weight": st.sampled_from([0, 0.5, 1, 2, -1, float("nan")]),
                                                    "train": st.booleans()}), min_size=1, max_size=5)


@settings(max_examples=20 * SCALE, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(conversations=st.lists(MESSAGES, min_size=1, max_size=6), truncation=st.sampled_from(["split", "turns", "drop"]),
       max_length=st.sampled_from([24, 64]))
def test_random_conversations_through_the_tokenizer(conversations, truncation, max_length, tmp_path, prepare):
    """Random roles, awkward text, weights and train flags, rendered and tokenised with SmolLM2 and fitted to a
    short max_length: the pipeline ends cleanly or with one DataError, and accounts for every record."""
    path = tmp_path / "random.jsonl"
    good = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    lines = [json.dumps({"messages": good})] + [json.dumps({"messages": m}, ensure_ascii=True) for m in conversations]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = run_config([{"path": str(path)}], **{**FUZZ_DATA, "on_error": "skip", "truncation": truncation,
                                               "max_length": max_length})
    try:
        prepared = prepare(cfg)
    except DataError as error:
        assert str(error).startswith(f"{path}") and "\n" not in str(error)
        return
    report = prepared.data.report
    assert report.read == len(lines) and report.unaccounted == 0
    sources = Counter(s.source for s in prepared.data.train)
    assert set(sources) <= {f"{path}:{i}" for i in range(1, len(lines) + 1)}
    if truncation != "split":
        assert len(prepared.data.train) == report.kept_records  # one sample per kept record
