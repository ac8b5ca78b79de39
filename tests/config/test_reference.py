"""Each config field's help lives once (schema metadata); the docs' annotated reference is generated from it."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import yaml

from ember.config.reference import annotated_yaml, docs_reference, docs_block
from ember.config.schema import EmberConfig

DOCS = Path(__file__).resolve().parents[2] / "docs" / "training.md"


def _all_fields(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            yield from _all_fields(tp, f"{prefix}{f.name}.")
        elif typing.get_origin(tp) is list and args and dataclasses.is_dataclass(args[0]):
            yield f"{prefix}{f.name}", f
            yield from _all_fields(args[0], f"{prefix}{f.name}.0.")
        else:
            yield f"{prefix}{f.name}", f


def test_every_field_has_help():
    missing = [name for name, f in _all_fields(EmberConfig) if not f.metadata.get("help")]
    assert missing == []


def test_the_docs_show_the_generated_reference():
    # after a schema change: python -m ember.config.reference --write docs/training.md
    assert docs_reference(DOCS) == docs_block()


def test_the_reference_is_valid_yaml_that_loads_as_the_defaults(tmp_path):
    from ember.config import load_config

    path = tmp_path / "reference.yaml"
    path.write_text(annotated_yaml(), encoding="utf-8")
    loaded = load_config(path)
    defaults = EmberConfig()
    defaults.data.datasets = loaded.data.datasets  # the reference shows one example dataset entry
    assert loaded == defaults
    assert yaml.safe_load(annotated_yaml())["data"]["datasets"][0]["path"] == "examples/data/quickstart.jsonl"


def test_ember_config_prints_a_section(capsys):
    from ember.cli import main

    assert main(["config", "train"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("train:") and "  learning_rate: 0.0002" in out and "\nmodel:" not in out
    assert main(["config", "nope"]) == 2
