"""Data-path fixtures: write small input files in tmp_path, build run configs, and render with the real SmolLM2."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path
from typing import Any

import pytest

# What SmolLM2's own chat template puts in front of a conversation that has no system message.
SMOL_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def write_file(path: Path, content: Any) -> Path:
    """Write `content` in the layout the suffix asks for; str/bytes are written verbatim."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in content), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(content, ensure_ascii=False, indent=2), encoding="utf-8")
    elif path.suffix == ".csv":
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(content[0]))
            writer.writeheader()
            writer.writerows(content)
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(content), path)
    else:
        raise ValueError(f"write_file: no layout for {path.suffix}")
    return path


@pytest.fixture
def write(tmp_path):
    """write("name.jsonl", records) -> Path inside tmp_path."""
    return lambda name, content: write_file(tmp_path / name, content)


def run_config(datasets: list[dict[str, Any]], stage: str = "sft", **data: Any):
    """A validated `EmberConfig` reading `datasets`; no shuffling and no cache unless asked for."""
    from ember.config import EmberConfig, from_dict, validate

    options = {"shuffle": False, "cache": False, **data}
    return validate(from_dict(EmberConfig, {"stage": stage, "data": {"datasets": datasets, **options}}, "test"))


@pytest.fixture
def make_config():
    return run_config


@pytest.fixture(scope="session")
def renderer(smol_tokenizer):
    """SmolLM2's own chat template (data.template: auto)."""
    from ember.data.render import Renderer

    return Renderer(smol_tokenizer)


@pytest.fixture
def tokenizer_copy(smol_tokenizer):
    """A private copy for tests that add tokens or switch the template (prepare_data writes the template into it)."""
    return copy.deepcopy(smol_tokenizer)


@pytest.fixture
def prepare(smol_tokenizer):
    """prepare(cfg, tokenizer=None) -> PreparedData, with the shared SmolLM2 tokenizer by default."""
    from ember.training.prepare import prepare_data

    def run(cfg, tokenizer=None):
        if tokenizer is None:
            # A shipped template is written into the tokenizer: keep the session one untouched.
            tokenizer = smol_tokenizer if cfg.data.template == "auto" else copy.deepcopy(smol_tokenizer)
        return prepare_data(cfg, tokenizer=tokenizer, progress=False)

    return run
