"""``--help`` for every entry point that takes config overrides, generated from the config tree:
each key with its type, default and meaning (the comment beside the field in runtime/config/schema.py)."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any

from runtime.config.parse import _field_types
from runtime.config.schema import Config

__all__ = ["config_help", "config_markdown"]


def _field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the source: the trailing ``# ...`` of its line, else the comment
    lines just above it (the config's documentation lives there, next to the values)."""
    import inspect

    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    above: list[str] = []
    for line in lines:
        text = line.strip()
        if text.startswith("#"):
            above.append(text.lstrip("# ").strip())
            continue
        name, colon, rest = text.partition(":")
        if colon and name.isidentifier() and not text.startswith(("def ", "class ", "@")):
            _, hash_, comment = rest.partition("  #")
            out[name] = comment.strip() if hash_ else " ".join(above)
        above = []
    return out


def _type_name(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and args:
        return f"{args[0].__name__} or none"
    return getattr(tp, "__name__", str(tp))


Row = tuple[str, str, str, str]  # (dotted key, type name, default as JSON, meaning)


def _sections(cls: type, prefix: str = "") -> list[tuple[str, list[Row]]]:
    """(section prefix, its keys) for ``cls`` and, after it, each nested section, depth first."""
    hints, comments, defaults = _field_types(cls), _field_comments(cls), cls()
    rows: list[Row] = []
    nested: list[tuple[str, list[Row]]] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            nested += _sections(tp, f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", _type_name(tp), json.dumps(getattr(defaults, f.name)),
                         comments.get(f.name, "")))
    return [(prefix, rows), *nested]


def config_help(cls: type = None) -> str:  # type: ignore[assignment]
    """Every config key with its type, default and meaning, grouped by section."""
    blocks = []
    for prefix, rows in _sections(cls or Config):
        lines = [f"[{prefix.rstrip('.')}]" if prefix else "[top level]"]
        for key, type_name, default, meaning in rows:
            lines.append(f"  --{key}={type_name.upper()}  (default {default})")
            if meaning:
                lines.append(f"      {meaning}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def config_markdown(cls: type = None) -> str:  # type: ignore[assignment]
    """docs/config-reference.md: every key as a table row (key, type, default, meaning), one table
    per section; ``python -m runtime.config.help > docs/config-reference.md`` writes it."""
    out = ["# Configuration reference", "",
           "Generated from the config tree (`python -m runtime.config.help > docs/config-reference.md`; a test",
           "keeps it in step): every key with its type, default and meaning. How to set them:",
           "[configuration.md](configuration.md).", ""]
    for prefix, rows in _sections(cls or Config):
        if rows:
            out += [f"## `{prefix.rstrip('.')}`" if prefix else "## top level", "",
                    "| key | type | default | meaning |", "|---|---|---|---|",
                    *(f"| `--{key}` | {type_name} | `{default}` | {meaning.replace('|', chr(92) + '|')} |"
                      for key, type_name, default, meaning in rows), ""]
    return "\n".join(out).rstrip("\n") + "\n"


if __name__ == "__main__":
    print(config_markdown(), end="")
