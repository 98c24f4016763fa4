"""Typed dataclasses <-> TOML: strict construction from dicts, dotted overrides, a TOML writer.

Generic machinery behind ``pretrain.config`` (which holds the actual sections):

- ``from_dict(cls, data)``: builds a (nested) dataclass, checking every key and type;
  unknown keys name the key and the closest valid one (``optimizer.lrr: unknown key; did
  you mean lr?``); ints are accepted where floats are expected, nothing else is coerced.
- ``apply_override(raw, "a.b=value")``: values are TOML literals (``6e-4``, ``true``,
  ``[0.9, 0.98]``, ``"x"``); anything that does not parse as one is taken as a bare string.
- ``to_toml(obj)``: TOML text of a dataclass (``None`` values are omitted: TOML has no
  null, and every ``None`` field defaults to ``None``). Written by hand, so that saving the
  resolved config needs no extra dependency; ``tomllib`` reads it back.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import types
import typing
from typing import Any

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as a package
    import tomli as tomllib

from data_pipeline.common import CommandError


class ConfigError(CommandError, ValueError):
    """An invalid configuration: one line naming the key."""


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return from_dict(tp, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: unexpected value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected an array, got {value!r}")
        args = typing.get_args(tp)
        elem = args[0] if args else Any
        items = [_coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp in (bool, str):
        if isinstance(value, tp):
            return value
    else:
        raise ConfigError(f"{key}: unsupported field type {tp!r}")
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def unknown_key_error(key: str, valid: typing.Iterable[str], prefix: str = "") -> ConfigError:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else f"; valid keys: {', '.join(sorted(valid))}"
    return ConfigError(f"{prefix}{key}: unknown key{hint}")


def unknown_value_error(key: str, value: str, valid: typing.Iterable[str]) -> ConfigError:
    close = difflib.get_close_matches(str(value), list(valid), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else f"; choose from {', '.join(sorted(valid))}"
    return ConfigError(f"{key}: unknown value {value!r}{hint}")


def from_dict(cls, data: dict, prefix: str = ""):
    """Instance of dataclass ``cls`` from ``data``, strictly (see the module docstring)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise unknown_key_error(key, fields, prefix)
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], prefix + name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            if dataclasses.is_dataclass(hints[name]):  # name the missing key inside the table
                _coerce({}, hints[name], prefix + name)
            raise ConfigError(f"{prefix}{name}: required key missing")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(
            msg if prefix.rstrip(".") in msg else f"{prefix.rstrip('.') or 'config'}: {msg}"
        ) from e


def parse_value(text: str) -> Any:
    """A TOML literal (number, bool, string, array, inline table), else the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(raw: dict, item: str) -> None:
    """Set ``a.b.c=value`` in the nested dict ``raw`` (creating tables as needed)."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: expected dotted.key=value")
    *parents, leaf = key.split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parents[: i + 1])} is not a table")
        node = child
    node[leaf] = parse_value(value.strip())


def deep_merge(base: dict, extra: dict) -> dict:
    """``base`` updated recursively with ``extra`` (new dict; tables merge, values replace)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = (
            deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


# ----------------------------------------------------------------------------- TOML writer

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        items = ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items() if x is not None)
        return "{" + items + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _table(d: dict, path: list[str], out: list[str]) -> None:
    scalars = {k: v for k, v in d.items() if not isinstance(v, dict) and v is not None}
    tables = {k: v for k, v in d.items() if isinstance(v, dict)}
    if path:
        out.append("\n[" + ".".join(_key(p) for p in path) + "]")
    out.extend(f"{_key(k)} = {_value(v)}" for k, v in scalars.items())
    for k, v in tables.items():
        _table(v, [*path, k], out)


def dict_to_toml(d: dict) -> str:
    out: list[str] = []
    _table(d, [], out)
    return "\n".join(out).lstrip("\n") + "\n"


def to_toml(obj) -> str:
    """TOML text of a dataclass instance (nested dataclasses become tables)."""
    return dict_to_toml(dataclasses.asdict(obj))
