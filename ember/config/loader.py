"""YAML + dotted CLI overrides → typed dataclasses, rejecting unknown keys with the closest valid name."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from ember.config.schema import EmberConfig
from ember.errors import ConfigError


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), cls: type = EmberConfig):
    """Read a YAML file (or start from defaults when `path` is None) and apply `key.sub=value` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"{p} is a folder: give the run's config YAML file (e.g. examples/quickstart.yaml)")
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections (model:, data:, ...)")
    where = str(path) if path else "config"
    from_file = copy.deepcopy(raw) if path is not None and overrides else None
    for item in overrides:
        apply_override(raw, item)
    try:
        return from_dict(cls, raw, where=where)
    except ConfigError as exc:
        message = str(exc)
        names_the_file = message.startswith(where) and message[len(where): len(where) + 1] in (".", ":")
        if from_file is None or not names_the_file or not _converts(cls, from_file, where):
            raise
        # the file alone is valid: the key or value came from the command line, which the file's name would misname
        message = message[len(where) + 1:].lstrip()
        raise ConfigError(f"{message} (in the command-line overrides, not {where})") from None


def _converts(cls: type, data: Any, where: str) -> bool:
    try:
        from_dict(cls, data, where)
    except ConfigError:
        return False
    return True


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (`1e-4`, `true`, `[a, b]`). A numeric
    part indexes a list (`data.datasets.0.path=x.jsonl`; the index may be the list's length, to append)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.key=value (e.g. train.learning_rate=1e-4)")
    key, _, text = item.partition("=")
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    parts = key.strip().split(".")
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit():
                raise ConfigError(f"override '{item}': {'.'.join(parts[:depth])} is a list; index it with a number "
                                  f"(e.g. {'.'.join(parts[:depth])}.0.{part})")
            index = int(part)
            if index > len(node):
                raise ConfigError(f"override '{item}': {where} is past the end of a list of {len(node)}")
            if index == len(node):
                node.append(None if last else {})
            if last:
                node[index] = value
            elif not isinstance(node[index], (dict, list)):
                node[index] = {}
            node = node[index]
            continue
        if last:
            node[part] = value
            return
        child = node.get(part)
        if not isinstance(child, (dict, list)):
            child = [] if parts[depth + 1].isdigit() else {}
            node[part] = child
        node = child


def from_dict(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}: {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"{where}: unknown key '{key}'{hint}")
        kwargs[key] = coerce(hints[key], value, f"{where}.{key}")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where}: {exc}") from None


def coerce(tp: Any, value: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, converting where YAML is loose (ints for floats, etc.)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} does not fit {tp}")
    if origin is Literal:
        if isinstance(value, bool) and all(isinstance(a, str) for a in args):
            # YAML 1.1 reads an unquoted `no` / `off` (`yes` / `on`) as a boolean: `save_strategy: no` means "no".
            spelled = [a for a in args if a in (("yes", "on", "true") if value else ("no", "off", "false"))]
            if len(spelled) == 1:
                return spelled[0]
        if value in args:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{where}: '{value}' is not one of {', '.join(map(str, args))}{hint}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "2e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)
