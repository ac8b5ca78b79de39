"""Corpus reading: .txt lines, .jsonl {text}, chinese-poetry and cmrc2018 JSON shapes, --field, errors."""

from __future__ import annotations

import json

import pytest

from ember.errors import DataError
from ember.vocab.corpus import read_corpus


def _write(path, value):
    path.write_text(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def test_txt_and_jsonl(tmp_path):
    txt = _write(tmp_path / "a.txt", "第一行\n\n  第二行 \n")
    jsonl = _write(tmp_path / "b.jsonl", '{"text": "一"}\n{"text": "二", "id": 3}\n')
    assert read_corpus([txt, jsonl]) == ["第一行", "  第二行 ", "一", "二"]


def test_chinese_poetry_shapes(tmp_path):
    single = _write(tmp_path / "daxue.json", {"chapter": "大學", "paragraphs": ["大學之道", "在明明德"]})
    poems = _write(tmp_path / "shijing.json", [{"title": "关雎", "content": ["关关雎鸠", "在河之洲"]}])
    nested = _write(tmp_path / "tang.json", {"title": "唐詩", "content": [
        {"type": "五言", "content": [{"chapter": "行宮", "author": "元稹", "paragraphs": ["寥落古行宮", "宮花寂寞紅"]}]}]})
    notes = _write(tmp_path / "youmengying.json", [{"content": "读经宜冬", "comment": ["曹曰：可", "庞曰：然"]}])
    assert read_corpus([single, poems, nested, notes]) == [
        "大學之道\n在明明德", "关关雎鸠\n在河之洲", "寥落古行宮\n宮花寂寞紅", "读经宜冬", "曹曰：可\n庞曰：然"]


def test_cmrc_contexts_without_answers_and_field(tmp_path):
    cmrc = _write(tmp_path / "cmrc.json", {"version": "v1", "data": [{"id": "1", "title": "标题", "paragraphs": [
        {"context": "上下文一", "qas": [{"question": "问题", "answers": [{"text": "答案", "answer_start": 0}]}]}]}]})
    assert read_corpus([cmrc]) == ["上下文一"]
    assert read_corpus([cmrc], field="question") == ["问题"]
    assert read_corpus([tmp_path]) == ["上下文一"]  # a folder: every text file below it


def test_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(DataError, match="missing.txt: file not found"):
        read_corpus([tmp_path / "missing.txt"])
    bad = _write(tmp_path / "bad.jsonl", '{"text": "好"}\n{"text": \n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: invalid JSON"):
        read_corpus([bad])
    empty = _write(tmp_path / "empty.jsonl", '{"id": 1}\n')
    with pytest.raises(DataError, match="no text under any of text, content"):
        read_corpus([empty])
    with pytest.raises(DataError, match="no corpus file given"):
        read_corpus([])
