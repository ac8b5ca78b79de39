"""The config loader: YAML + dotted overrides → typed dataclasses; unknown keys and bad values fail with a hint."""

from __future__ import annotations

import pytest
import yaml

from ember.config import DatasetSpec, EmberConfig, dump_yaml, from_dict, load_config, validate
from ember.errors import ConfigError

BASE = {
    "stage": "sft",
    "model": {"name_or_path": "smollm2-135m-instruct"},
    "data": {"datasets": [{"path": "data/demo.jsonl", "format": "auto"}], "eval_split": 0.05, "max_length": 1024},
    "method": {"type": "lora"},
    "train": {"learning_rate": 2.0e-4},
    "output": {"dir": "runs/demo"},
}


@pytest.fixture
def config_path(tmp_path):
    def write(raw=None):
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(BASE if raw is None else raw), encoding="utf-8")
        return path

    return write


def test_yaml_loads_into_typed_sections(config_path):
    cfg = load_config(config_path())
    assert isinstance(cfg, EmberConfig)
    assert cfg.data.datasets == [DatasetSpec(path="data/demo.jsonl")]
    assert (cfg.data.eval_split, cfg.data.max_length, cfg.data.mask, cfg.data.truncation) == (0.05, 1024, "all_assistant", "split")
    assert cfg.train.learning_rate == 2.0e-4 and cfg.method.type == "lora" and cfg.output.dir == "runs/demo"


def test_defaults_without_a_file():
    cfg = load_config(None, ["data.datasets=[{path: a.jsonl}]"])
    assert cfg.stage == "sft" and cfg.model.name_or_path == "smollm2-135m-instruct"
    assert cfg.data.datasets[0].path == "a.jsonl" and cfg.data.on_error == "strict"


@pytest.mark.parametrize(
    ("override", "get", "value"),
    [
        ("train.learning_rate=1e-4", lambda c: c.train.learning_rate, 1e-4),  # YAML reads "1e-4" as a string
        ("train.learning_rate=3", lambda c: c.train.learning_rate, 3.0),
        ("data.max_length=512", lambda c: c.data.max_length, 512),
        ("data.max_length=512.0", lambda c: c.data.max_length, 512),
        ("data.cache=false", lambda c: c.data.cache, False),
        ("train.bf16=null", lambda c: c.train.bf16, None),
        ("train.bf16=true", lambda c: c.train.bf16, True),
        ("data.system=You are terse.", lambda c: c.data.system, "You are terse."),
        ("data.system=", lambda c: c.data.system, ""),
        ("output.dir=123", lambda c: c.output.dir, "123"),
        ("method.targets=[q_proj, v_proj]", lambda c: c.method.targets, ["q_proj", "v_proj"]),
        ("method.bits=8", lambda c: c.method.bits, 8),
        ("train.extra={adam_beta2: 0.95}", lambda c: c.train.extra, {"adam_beta2": 0.95}),
        ("data.template=chatml", lambda c: c.data.template, "chatml"),
    ],
)
def test_overrides_parse_types(config_path, override, get, value):
    cfg = load_config(config_path(), [override])
    assert get(cfg) == value and type(get(cfg)) is type(value)


def test_override_creates_a_section_and_keeps_the_rest(config_path):
    datasets = "data.datasets=[{path: x.csv, format: columns, columns: {prompt: q, response: a}, samples: 10}]"
    cfg = load_config(config_path(), [datasets, "data.eval_split=0"])
    assert cfg.data.datasets == [DatasetSpec(path="x.csv", format="columns", columns={"prompt": "q", "response": "a"}, samples=10)]
    assert cfg.data.eval_split == 0.0 and cfg.data.max_length == 1024  # untouched keys stay


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.max_lenght=512", "data: unknown key 'max_lenght'; did you mean 'max_length'?"),
        ("trian.learning_rate=1e-4", "unknown key 'trian'; did you mean 'train'?"),
        ("train.learnin_rate=1e-4", "train: unknown key 'learnin_rate'; did you mean 'learning_rate'?"),
        ("data.datasets=[{path: a.jsonl, fromat: alpaca}]", "data.datasets[0]: unknown key 'fromat'; did you mean 'format'?"),
        ("model.zzz=1", "model: unknown key 'zzz'; valid keys: name_or_path, tokenizer, revision, "),
    ],
)
def test_unknown_keys_suggest_the_closest_name(config_path, override, message):
    path = config_path()  # a valid file: the override's mistake is named as the command line's
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    assert str(info.value).startswith(message)
    assert str(info.value).endswith(f" (in the command-line overrides, not {path})")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.mask=last_asistant",
         "data.mask: 'last_asistant' is not one of all_assistant, last_assistant, all (did you mean 'last_assistant'?)"),
        ("data.truncation=middle", "data.truncation: 'middle' is not one of split, turns, left, right, drop"),
        ("stage=ppo", "stage: 'ppo' is not one of pt, sft, dpo, orpo, simpo, kto (did you mean 'dpo'?)"),
        ("data.datasets=[{path: a.jsonl, format: sharegtp}]",
         "data.datasets[0].format: 'sharegtp' is not one of auto, alpaca, sharegpt, openai, firefly, moss, glaive, columns, "
         "text, pairs, kto (did you mean 'sharegpt'?)"),
        ("data.datasets=[{path: a.jsonl, split: test}]", "data.datasets[0].split: 'test' is not one of train, eval"),
        ("method.bits=3", "method.bits: '3' is not one of 4, 8"),
        ("data.max_length=abc", "data.max_length: expected an integer, got 'abc'"),
        ("data.max_length=1.5", "data.max_length: expected an integer, got 1.5"),
        ("data.cache=maybe", "data.cache: expected true or false, got 'maybe'"),
        ("train.learning_rate=fast", "train.learning_rate: expected a number, got 'fast'"),
        ("data.datasets=[{path: a.jsonl, samples: 2.5}]", "data.datasets[0].samples: expected an integer, got 2.5"),
        ("data.datasets={path: a.jsonl}", "data.datasets: expected a list, got {'path': 'a.jsonl'}"),
        ("data.datasets=[a.jsonl]", "data.datasets[0]: expected a mapping for DatasetSpec, got str: 'a.jsonl'"),
        ("data.datasets=[{format: alpaca}]", "data.datasets[0]: DatasetSpec.__init__() missing 1 required positional argument: 'path'"),
        ("train.bf16=1", "train.bf16: expected true or false, got 1"),
    ],
)
def test_bad_values_are_named(config_path, override, message):
    path = config_path()
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    assert str(info.value) == f"{message} (in the command-line overrides, not {path})"


def test_nested_dataset_entries_are_typed(config_path):
    raw = dict(BASE, data={"datasets": [
        {"path": "a.jsonl", "samples": 100},
        {"path": "b.parquet", "format": "sharegpt", "ratio": 0.5},
        {"path": "dev.json", "split": "eval", "system": "Be brief."},
    ]})
    cfg = load_config(config_path(raw))
    a, b, dev = cfg.data.datasets
    assert all(isinstance(d, DatasetSpec) for d in (a, b, dev))
    assert (a.samples, a.ratio, a.format, a.split) == (100, None, "auto", "train")
    assert (b.format, b.ratio) == ("sharegpt", 0.5)
    assert (dev.split, dev.system) == ("eval", "Be brief.")


def test_override_needs_an_equals_sign(config_path):
    with pytest.raises(ConfigError, match=r"^override 'data.max_length' must look like section.key=value"):
        load_config(config_path(), ["data.max_length"])


def test_file_problems(tmp_path):
    with pytest.raises(ConfigError, match=r"^config file not found: .*missing.yaml$"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML"):
        load_config(bad)
    bad.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.yaml: the top level must be a mapping of sections"):
        load_config(bad)


def test_yaml_round_trip(config_path, tmp_path):
    cfg = load_config(config_path(), ["data.mask=last_assistant", "train.learning_rate=1e-5"])
    again = tmp_path / "again.yaml"
    again.write_text(dump_yaml(cfg), encoding="utf-8")
    assert load_config(again) == cfg


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"datasets": []}, "data.datasets is empty: add at least one {path: FILE} entry"),
        ({"datasets": [{"path": "a", "samples": 5, "ratio": 0.5}]}, "data.datasets[0] (a): give either samples or ratio, not both"),
        ({"datasets": [{"path": "a", "ratio": 0}]}, "data.datasets[0] (a): ratio must be > 0"),
        ({"datasets": [{"path": "a", "samples": -3}]}, "data.datasets[0] (a): samples must be > 0"),  # not a slice
        ({"datasets": [{"path": "a", "samples": 0}]}, "data.datasets[0] (a): samples must be > 0"),
        ({"datasets": [{"path": "a", "format": "text"}]}, "data.datasets[0] (a): format 'text' is raw text; use stage: pt"),
        ({"datasets": [{"path": "a"}], "eval_split": 1.0}, "data.eval_split=1.0 must be in [0, 1)"),
        ({"datasets": [{"path": "a"}], "max_length": 4}, "data.max_length=4 is too small (use at least 8)"),
        ({"datasets": [{"path": "a"}], "num_proc": 0}, "data.num_proc must be >= 1 (or unset: the machine's cores)"),
    ],
)
def test_cross_field_rules(data, message):
    with pytest.raises(ConfigError) as info:
        validate(from_dict(EmberConfig, {"data": data}, "cfg"))
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"learning_rate": 0.5}, "train.extra.learning_rate would override train.learning_rate and skip its checks: "
                                 "set train.learning_rate=0.5 instead and remove train.extra.learning_rate"),
        ({"max_steps": 1}, "train.extra.max_steps would override train.max_steps and skip its checks: set "
                           "train.max_steps=1 instead and remove train.extra.max_steps"),
        ({"warmup_steps": "abc"}, "train.extra.warmup_steps would override train.warmup_steps and skip its checks: "
                                  "set train.warmup_steps=abc instead and remove train.extra.warmup_steps"),
        ({"output_dir": "elsewhere"}, "train.extra.output_dir would override output.dir and skip its checks: set "
                                      "output.dir=elsewhere instead and remove train.extra.output_dir"),
        ({"adam_beta2": "abc"}, "train.extra.adam_beta2: expected a number, got 'abc'"),
        ({"torch_empty_cache_steps": 2.5}, "train.extra.torch_empty_cache_steps: expected an integer, got 2.5"),
        ({"dataloader_pin_memory": "yes"}, "train.extra.dataloader_pin_memory: expected true or false, got 'yes'"),
        ({"run_name": ["a"]}, "train.extra.run_name: expected a string, got ['a']"),
        ({"adam_epsilom": 1e-8}, "train.extra.adam_epsilom is not a TrainingArguments field; did you mean "
                                 "'adam_epsilon'?"),
    ],
)
def test_train_extra_keys_and_values_are_checked_before_loading(extra, message):
    raw = {"data": {"datasets": [{"path": "a"}]}, "train": {"extra": extra}}
    with pytest.raises(ConfigError) as info:
        validate(from_dict(EmberConfig, raw, "cfg"))
    assert str(info.value) == message


def test_train_extra_values_are_converted_to_the_field_type(config_path):
    overrides = ["train.extra={adam_epsilon: 1e-8, ddp_timeout: 7200.0, data_seed: null, fsdp: [full_shard, auto_wrap],"
                 " lr_scheduler_kwargs: {min_lr: 1e-6}}"]
    extra = validate(load_config(config_path(), overrides)).train.extra
    # YAML reads 1e-8 as a string; fsdp is annotated str but also takes a list; dicts pass as they are
    assert extra == {"adam_epsilon": 1e-8, "ddp_timeout": 7200, "data_seed": None, "fsdp": ["full_shard", "auto_wrap"],
                     "lr_scheduler_kwargs": {"min_lr": "1e-6"}}
    assert type(extra["adam_epsilon"]) is float and type(extra["ddp_timeout"]) is int


def test_eval_strategy_needs_validation_data():
    raw = {"data": {"datasets": [{"path": "a"}]}, "train": {"eval_strategy": "steps"}}
    with pytest.raises(ConfigError, match=r"^train.eval_strategy=steps but there is no validation data"):
        validate(from_dict(EmberConfig, raw, "cfg"))
    raw["data"]["datasets"].append({"path": "dev", "split": "eval"})
    validate(from_dict(EmberConfig, raw, "cfg"))


def test_dotted_overrides_reach_into_lists(config_path):
    cfg = load_config(config_path(), ["data.datasets.0.path=other.jsonl", "data.datasets.0.samples=5",
                                      "data.datasets.1.path=extra.jsonl", "data.datasets.1.split=eval"])
    assert [(d.path, d.samples, d.split) for d in cfg.data.datasets] == [("other.jsonl", 5, "train"),
                                                                         ("extra.jsonl", None, "eval")]


def test_a_list_override_past_the_end_or_without_an_index_is_named(config_path):
    with pytest.raises(ConfigError, match=r"data\.datasets\.3 is past the end of a list of 1"):
        load_config(config_path(), ["data.datasets.3.path=x.jsonl"])
    with pytest.raises(ConfigError, match=r"data\.datasets is a list; index it with a number \(e\.g\. data\.datasets\.0\.path\)"):
        load_config(config_path(), ["data.datasets.path=x.jsonl"])
