"""Building the config tree: CLI overrides > config file (JSON or YAML) > defaults, values
coerced to each field's annotated type, then one ``Config`` built from the merged dict (so
every section's ``__post_init__`` sees the final values). The parser imports the schema
(``runtime/config/schema.py``), never the reverse.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

from runtime.config.schema import Config, ConfigError


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Coerce a CLI string (or file value) to the field's annotated type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected a boolean, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(float(value)) if tp is int and isinstance(value, str) and "e" in value.lower() else tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str | int | float):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = _field_types(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        where = f"section {prefix.rstrip('.')!r}" if prefix else "the top level"
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + u for u in unknown)} in {where}; "
                          f"known: {', '.join(sorted(known))}")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{name} is a section; set its keys as --{prefix}{name}.KEY=VALUE")
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
    return cls(**kwargs)


def _load_file(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = p.read_text(encoding="utf-8")
    if p.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--{dotted}: {part!r} is not a section")
    node[parts[-1]] = value


def parse_overrides(argv: list[str]) -> tuple[str | None, list[tuple[str, str]], list[str]]:
    """Split argv into (--config FILE, [(dotted.key, value)], leftover flags)."""
    config_file: str | None = None
    pairs: list[tuple[str, str]] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --section.key=value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                rest.append(arg)
                i += 1
                continue
            value = argv[i + 1]
            i += 1
        i += 1
        if key == "config":
            config_file = value
        else:
            pairs.append((key.replace("-", "_"), value))
    return config_file, pairs, rest


def build_config(argv: list[str] | None = None, base: dict[str, Any] | None = None) -> Config:
    """Build and validate the config tree from defaults, an optional file and CLI overrides."""
    config_file, pairs, rest = parse_overrides(list(argv or []))
    if rest:
        raise ConfigError(f"flag(s) without a value: {' '.join(rest)}")
    tree: dict[str, Any] = json.loads(json.dumps(base or {}))
    if config_file:
        file_tree = _load_file(config_file)
        for section, values in file_tree.items():
            if isinstance(values, dict):
                tree.setdefault(section, {}).update(values)
            else:
                tree[section] = values
    for key, value in pairs:
        _set_dotted(tree, key, value)
    return _build(Config, tree, "")


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a saved config (config.json of a run)."""
    return _build(Config, data, "")


