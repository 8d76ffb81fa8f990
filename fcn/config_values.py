"""Values into a frozen dataclass tree: YAML and command-line strings coerced to each field's type.

The mechanism under ``fcn/config.py``: nested dicts (a YAML file, ``--set``
overrides) become the dataclasses of the tree, every key checked (an unknown
one is refused with the valid keys) and every value converted to its field's
type or refused naming the key, the source and the expected type.
"""

import dataclasses
import math
import os
import types
import typing

from fcn.errors import ConfigError


def field_types(cls) -> dict[str, type]:
    """Field name -> resolved type annotation."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def dotted_keys(cls, prefix: str = "") -> list[str]:
    keys = []
    for name, type_ in field_types(cls).items():
        if dataclasses.is_dataclass(type_):
            keys.extend(dotted_keys(type_, f"{prefix}{name}."))
        else:
            keys.append(prefix + name)
    return keys


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def coerce(value, type_, key: str, source: str):
    """Converts ``value`` (from YAML or a command-line string) to ``type_``."""

    def fail(expected):
        raise ConfigError(f"{source}: {key} must be {expected}, got {value!r}")

    if isinstance(type_, types.UnionType):  # e.g. a pair or a word: the first type that takes the value
        if value is None and str in typing.get_args(type_):
            return "none"
        for member in typing.get_args(type_):
            try:
                return coerce(value, member, key, source)
            except ConfigError:
                continue
        fail(" or ".join(describe(t) for t in typing.get_args(type_)))

    if type_ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        fail("true or false")
    if type_ is int:
        if isinstance(value, bool):
            fail("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                fail("an integer")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        fail("an integer")
    if type_ is float:
        if isinstance(value, bool):
            fail("a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                fail("a number")
        fail("a number")
    if type_ is str:
        if isinstance(value, str):
            return value
        if value is None:
            return ""
        fail("a string")
    if typing.get_origin(type_) is tuple:
        item_types = typing.get_args(type_)
        if len(item_types) == 2 and item_types[1] is Ellipsis:  # tuple[float, ...]: one or more values
            items = value
            if isinstance(value, str):
                items = [part for part in value.strip().strip("[]()").split(",") if part.strip()]
            elif not isinstance(value, (list, tuple)):
                items = [value]
            if not items:
                fail("a list of one or more values")
            return tuple(coerce(v, item_types[0], key, source) for v in items)
        items = value
        if isinstance(value, str):
            text = value.strip().strip("[]()")
            items = [part for part in text.replace("x", ",").split(",") if part.strip()]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            items = [value]
        if not isinstance(items, (list, tuple)):
            fail(f"a list of {len(item_types)} values")
        if len(items) == 1 and len(item_types) > 1:
            items = list(items) * len(item_types)  # "64" means 64x64
        if len(items) != len(item_types):
            fail(f"a list of {len(item_types)} values")
        return tuple(coerce(v, t, key, source) for v, t in zip(items, item_types))
    raise TypeError(f"unsupported config type {type_} for {key}")  # a bug in this module


def describe(type_) -> str:
    if typing.get_origin(type_) is tuple:
        return f"a list of {len(typing.get_args(type_))} values"
    return {str: "a word", int: "an integer", float: "a number", bool: "true or false"}.get(type_, str(type_))


def build(cls, values: dict, prefix: str, source: str):
    """Builds dataclass ``cls`` from a nested dict, checking every key."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'the file'} must be a mapping, got {values!r}")
    fields = field_types(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        key = prefix + str(unknown[0])
        raise ConfigError(
            f"{source}: unknown key '{key}'. Valid keys"
            f"{' under ' + repr(prefix.rstrip('.')) if prefix else ''}: "
            + ", ".join(prefix + name for name in fields)
        )
    kwargs = {}
    for name, value in values.items():
        type_ = fields[name]
        if dataclasses.is_dataclass(type_):
            kwargs[name] = build(type_, value or {}, f"{prefix}{name}.", source)
        else:
            kwargs[name] = coerce(value, type_, prefix + name, source)
    return cls(**kwargs)


def merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def nest(dotted_key: str, value) -> dict:
    node = value
    for part in reversed(dotted_key.split(".")):
        node = {part: node}
    return node


def non_finite(config, prefix: str = "") -> list[str]:
    """One message per float value (alone or in a tuple) that is NaN or infinite."""
    problems = []
    for field in dataclasses.fields(config):
        key, value = prefix + field.name, getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            problems += non_finite(value, key + ".")
            continue
        items = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in items):
            problems.append(f"{key} must be a finite number, got {list(value) if isinstance(value, tuple) else value}")
    return problems


def existing_non_folder(path: str) -> str:
    """``path`` or its nearest existing ancestor when that is not a folder, else ""."""
    current = os.path.abspath(path)
    while not os.path.exists(current):
        parent = os.path.dirname(current)
        if parent == current:
            return ""
        current = parent
    if os.path.isdir(current):
        return ""
    return path if current == os.path.abspath(path) else current
