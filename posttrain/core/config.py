"""Config is data: YAML files with `defaults:` inheritance, checked against dataclasses.

Every error is one line that names the file and the key, and is raised before any model loads.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad config: the message names the file and the key."""


# A config value naming a file or directory that must exist when the config is checked.
ExistingPath = typing.NewType("ExistingPath", str)
DataRef = typing.NewType("DataRef", str)  # an ExistingPath, or a Hub dataset id `ORG/NAME`


# dataset file suffixes -> the `datasets` loader that reads them
FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def is_hub_id(path: str) -> bool:
    """`ORG/NAME`: one slash, no dataset file suffix, and nothing at that path on disk."""
    return (re.fullmatch(r"[\w.-]+/[\w.-]+", path) is not None
            and Path(path).suffix not in FORMATS and not Path(path).exists())


def is_placeholder(value: Any) -> bool:
    """`<...>`: a value the user still has to set (a GPU recipe's model paths); `--dry-run` lists them
    and a run refuses to start while any is left."""
    return isinstance(value, str) and len(value) > 2 and value[0] == "<" and value[-1] == ">" and "\n" not in value


def placeholders(data: Any, where: str = "") -> list[str]:
    """The keys (`a.b[2].c`) whose values are placeholders, and the values."""
    if is_placeholder(data):
        return [f"{where}: {data}"]
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in placeholders(v, f"{where}.{k}" if where else str(k))]
    if isinstance(data, list):  # a stage is named by its id, as overrides name it
        return [p for i, v in enumerate(data)
                for p in placeholders(v, f"{where}.{_stage_id(v)}" if isinstance(v, dict) and _stage_id(v)
                                      else f"{where}[{i}]")]
    return []


# ---------------------------------------------------------------------------------------------
# YAML with inheritance


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; `defaults: other.yaml` (or a list) is read first and overridden."""
    return _load(Path(path), seen=())


def _load(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: defaults: inheritance cycle through {path.name}")
    if not path.is_file():
        where = f"{seen[-1]}: defaults" if seen else "config"
        raise ConfigError(f"{where}: file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    parents = data.pop("defaults", None) or []
    if isinstance(parents, str):
        parents = [parents]
    merged: dict[str, Any] = {}
    for parent in parents:
        merged = merge(merged, _load(path.parent / parent, seen + (path,)))
    return merge(merged, data)


def apply_overrides(data: dict[str, Any], overrides: list[str], where: str = "command line") -> dict[str, Any]:
    """`a.b.c=VALUE` overrides (VALUE parsed as YAML) on a loaded mapping, as Hydra's users expect.
    Under `stages`, the next key is a stage id (or its kind): `stages.cold_start.config.train.max_steps=10`.
    The result is checked by the same dataclasses as the file, so a wrong key or type is an error."""
    out = copy.deepcopy(data)
    for item in overrides:
        dotted, sep, text = item.partition("=")
        if not sep or not dotted or any(not k for k in dotted.split(".")):
            raise ConfigError(f"{where}: override {item!r}: expected KEY.PATH=VALUE")
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError as err:
            raise ConfigError(f"{where}: override {item!r}: invalid YAML value: {' '.join(str(err).split())}") from None
        node, keys = out, dotted.split(".")
        for i, k in enumerate(keys[:-1]):
            if isinstance(node, list):  # the stages list: find the stage by id
                ids = [_stage_id(e) for e in node]
                if k not in ids:
                    raise ConfigError(f"{where}: override {item!r}: no stage {k!r} "
                                      f"(stages: {', '.join(map(str, ids))})")
                node = node[ids.index(k)]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: override {item!r}: {'.'.join(keys[:i])} is not a mapping")
            if not isinstance(node.get(k), (dict, list)):
                node[k] = {}
            node = node[k]
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: override {item!r}: {'.'.join(keys[:-1])} is not a mapping")
        node[keys[-1]] = value
    return out


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge mappings; `stages` lists merge by stage id so a child can override one stage."""
    out = dict(base)
    for key, value in override.items():
        if key == "stages" and isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = _merge_stages(out[key], value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _stage_id(entry: Any) -> Any:
    return (entry.get("id") or entry.get("stage")) if isinstance(entry, dict) else None


def _merge_stages(base: list[Any], override: list[Any]) -> list[Any]:
    out = list(base)
    for entry in override:
        ids = [_stage_id(e) for e in out]
        sid = _stage_id(entry)
        if sid is not None and sid in ids:
            i = ids.index(sid)
            out[i] = merge(out[i], entry) if isinstance(out[i], dict) else entry
        else:
            out.append(entry)
    return [e for e in out if not (isinstance(e, dict) and e.get("enabled") is False)]


# ---------------------------------------------------------------------------------------------
# Typed dataclasses from mappings


def from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from `data`, rejecting unknown keys and wrong types (named in `where`)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = check_type(value, hints[name], key(where, name))
    missing = [n for n, f in fields.items() if n not in kwargs and _required(f)]
    if missing:
        raise ConfigError(f"{where}: missing required key {missing[0]!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


def key(where: str, name: str) -> str:
    """`file.yaml` + `seed` -> `file.yaml: seed`; `file.yaml: stages[0]` + `id` -> `...stages[0].id`."""
    return f"{where}.{name}" if ": " in where else f"{where}: {name}"


def _required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def check_type(value: Any, hint: Any, where: str) -> Any:
    """Check (and lightly coerce: int -> float, dict -> dataclass) `value` against a type hint."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if hint is Path:
        if not isinstance(value, str | Path):
            raise ConfigError(f"{where}: expects a path, got {type(value).__name__} {value!r}")
        return Path(value)
    if hint in (ExistingPath, DataRef):
        check_type(value, str, where)
        if not Path(value).exists() and not is_placeholder(value) and not (hint is DataRef and is_hub_id(value)):
            raise ConfigError(f"{where}: file not found: {value}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return check_type(value, option, where)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expects a list, got {type(value).__name__} {value!r}")
        item = args[0] if args else Any
        return [check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expects a mapping, got {type(value).__name__} {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: check_type(v, vt, key(where, k)) for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expects {hint.__name__}, got {type(value).__name__} {value!r}")
        return value
    return value


def check_trainer_overrides(config_cls: type, overrides: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate pass-through keys for a TRL/transformers config class (names and simple types)."""
    known = {f.name: f for f in dataclasses.fields(config_cls)}
    for name, value in overrides.items():
        if name not in known:
            raise ConfigError(f"{where}: unknown {config_cls.__name__} key {name!r}")
        default = known[name].default
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{key(where, name)}: expects bool, got {type(value).__name__} {value!r}")
        if (isinstance(default, (int, float)) and not isinstance(default, bool)
                and (not isinstance(value, (int, float)) or isinstance(value, bool))):
            raise ConfigError(f"{key(where, name)}: expects a number, got {type(value).__name__} {value!r}")
    return overrides


def identity(obj: Any) -> Any:
    """`to_dict` as a finished stage's config hash sees it: a field added after runs were made
    (`field(..., metadata={"added": True})`) counts only when set away from its default, so those runs
    still resume."""
    if dataclasses.is_dataclass(obj):
        return {f.name: identity(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get("added") and getattr(obj, f.name) == _default(f))}
    if isinstance(obj, dict):
        return {k: identity(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [identity(v) for v in obj]
    return obj


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def to_dict(obj: Any) -> Any:
    """A dataclass (nested, or in dicts and lists) as plain data, for snapshots, hashing and job files."""
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    return obj
