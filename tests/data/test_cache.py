"""The processed-data cache: a second run reuses it; any change to inputs, tokenizer, template or options misses."""

from __future__ import annotations

import gc

import pytest

from ember.errors import ConfigError

RECORDS = [
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                  {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "See you."}]},
    {"instruction": "Add", "input": "1, 2", "output": "3"},
]


@pytest.fixture
def cached(write, make_config, tmp_path):
    """cached(*files, **data) -> a config over small files (default: chat.jsonl), cached in tmp_path/cache."""
    write("chat.jsonl", RECORDS[:1])
    write("more.jsonl", RECORDS[1:])

    def config(*files: str, **data):
        datasets = [{"path": str(tmp_path / f)} for f in files or ("chat.jsonl",)]
        return make_config(datasets, cache=True, cache_dir=str(tmp_path / "cache"), **data)

    return config


def _samples(prepared):
    return [(s.source, s.input_ids, s.labels, s.weights) for s in prepared.data.train]


def test_second_run_is_a_cache_hit_with_identical_samples(cached, prepare, tmp_path):
    first = prepare(cached())
    second = prepare(cached())
    assert (first.from_cache, second.from_cache) == (False, True)
    assert _samples(second) == _samples(first) and len(_samples(first)) == 1
    assert second.data.report.to_dict() == first.data.report.to_dict()
    entries = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(entries) == 1 and sorted(f.name for f in entries[0].iterdir()) == ["files.json", "report.json",
                                                                                 "train-00000.arrow"]


def test_parallelism_does_not_change_the_key(cached, prepare):
    assert prepare(cached()).from_cache is False
    assert prepare(cached(num_proc=2)).from_cache is True


def test_worker_processes_give_the_same_samples(write, make_config, prepare):
    """num_proc is left out of the key because the result is the same: check that it is, counts included."""
    # more than the 256 records below which one process does it all; every 20th sample is cut, every 30th dropped
    records = [{"messages": [{"role": "user", "content": f"Question {i}?" + " pad" * 60 * (i % 20 == 0)},
                             {"role": "assistant", "content": f"Answer {i}." + " more" * 90 * (i % 30 == 0)}]}
               for i in range(260)]
    path = write("many.jsonl", records)
    one, two = (prepare(make_config([{"path": str(path)}], max_length=96, truncation="turns", num_proc=n)) for n in (1, 2))
    assert _samples(two) == _samples(one)
    assert two.data.report.to_dict() == one.data.report.to_dict()
    assert one.data.report.dropped_too_long > 0 and one.data.report.truncated > 0
    assert gc.get_freeze_count() == 0  # the workers forked from a frozen heap (ember.core.heap); it is given back


def test_changed_file_contents_miss(cached, prepare, write):
    before = prepare(cached())
    write("chat.jsonl", [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey."}]}])
    after = prepare(cached())
    assert after.from_cache is False
    assert _samples(after) != _samples(before)
    assert prepare(cached()).from_cache is True


@pytest.mark.parametrize(
    "option",
    [{"max_length": 48}, {"mask": "last_assistant"}, {"mask": "all"}, {"truncation": "left"}, {"eval_split": 0.5},
     {"system": "Answer in French."}, {"seed": 7}],
)
def test_changed_option_misses(cached, prepare, option):
    files = ("chat.jsonl", "more.jsonl")
    assert prepare(cached(*files)).from_cache is False
    assert prepare(cached(*files, **option)).from_cache is False
    assert prepare(cached(*files, **option)).from_cache is True


def test_changed_dataset_list_misses(cached, prepare):
    assert prepare(cached()).from_cache is False
    assert prepare(cached("chat.jsonl", "more.jsonl")).from_cache is False


def test_changed_tokenizer_misses(cached, prepare, tokenizer_copy):
    assert prepare(cached()).from_cache is False
    tokenizer_copy.add_special_tokens({"additional_special_tokens": ["<|tool|>"]})
    assert prepare(cached(), tokenizer=tokenizer_copy).from_cache is False
    assert prepare(cached(), tokenizer=tokenizer_copy).from_cache is True


def test_changed_template_misses(cached, prepare, tmp_path, smol_tokenizer):
    assert prepare(cached()).from_cache is False
    # the same rendering as SmolLM2's own template but a different source: still a different key
    path = tmp_path / "mine.jinja"
    path.write_text(smol_tokenizer.chat_template + "{#- a comment #}", encoding="utf-8")
    first = prepare(cached(template=str(path)))
    assert first.from_cache is False
    assert prepare(cached(template=str(path))).from_cache is True
    path.write_text(smol_tokenizer.chat_template.replace("helpful AI assistant", "kind assistant"), encoding="utf-8")
    changed = prepare(cached(template=str(path)))
    assert changed.from_cache is False
    assert _samples(changed) != _samples(first)


def test_cache_off_never_writes(make_config, write, prepare, tmp_path):
    path = write("chat.jsonl", RECORDS[:1])
    cfg = make_config([{"path": str(path)}], cache=False, cache_dir=str(tmp_path / "cache"))
    assert prepare(cfg).from_cache is False
    assert prepare(cfg).from_cache is False
    assert not (tmp_path / "cache").exists()


def test_a_cache_dir_that_is_a_file_is_named(make_config, write, prepare, tmp_path):
    path = write("chat.jsonl", RECORDS[:1])
    blocker = write("afile", "not a folder")
    with pytest.raises(ConfigError) as info:
        prepare(make_config([{"path": str(path)}], cache=True, cache_dir=str(blocker)))
    message = str(info.value)
    assert message.startswith(f"data.cache_dir={blocker}: cannot write {blocker}/") and message.endswith(
        f".lock: {blocker} is a file, not a folder; give a folder that can be written, or data.cache: false")
