"""The loader: YAML mappings and dotted overrides in, a validated ``Config`` out.

Theory of operation: the loader walks the schema's dataclasses (``config.schema``) with
``dataclasses.fields`` and ``typing.get_type_hints``; it knows no section by name. Every value
goes through two steps, both named by its dotted key (``server.port``):

1. Coercion by annotation (``str``, ``int``, ``float``, ``bool``, ``X | None``, ``list[X]``,
   ``tuple[X, ...]``, a nested section) or by the field's metadata kind (``DURATION``:
   ``"30s"`` -> 30.0; ``SIZE``: ``"1MiB"`` -> 1048576). A bool never passes for a number,
   because YAML ``true`` would otherwise become 1.
2. The rule for that key in ``config.rules.RULES``: what is expected, a predicate, an
   optional normaliser.

Every failure is a ``ConfigError`` whose message is one line starting with the key, so a typo
in a long file is found from a single log line; an unknown key says which real key it is
probably a typo of. A section written as an empty YAML key (all of its keys commented out)
is null, and counts as all defaults. Values under a secret key (``config.rules.SECRET_KEYS``)
are described in errors, never shown.

Overrides (the command line's flags) are applied only after the file has been validated as
written, so a mistake in the file is reported even when a flag happens to replace it
(``--port 0`` over a bad ``server.port``), rather than on the first start without that
flag. ``defaults`` go under the file (``--demo``'s free admin port): they fill only keys the
file does not set.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, Final

from clawproxy.config.errors import ConfigError
from clawproxy.config.rules import is_secret, rule_for
from clawproxy.config.schema import Config
from clawproxy.units import parse_duration, parse_size, show_value

CONFIG_ENV_VAR: Final = "CLAWPROXY_CONFIG"

_SectionFields = dict[str, tuple[dataclasses.Field[Any], Any]]


@cache
def _fields(cls: type) -> _SectionFields:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def _split_optional(hint: Any) -> tuple[bool, Any]:
    """``(True, X)`` for ``X | None``, ``(False, hint)`` otherwise."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return True, args[0]
    return False, hint


def _is_section(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def config_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the schema, in declaration order (``server.host``, ...)."""
    keys: list[str] = []
    for name, (_, hint) in _fields(cls).items():
        dotted = _join(prefix, name)
        inner = _split_optional(hint)[1]
        keys.extend(config_keys(inner, dotted) if _is_section(inner) else [dotted])
    return keys


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return _is_int(value)


_SCALARS: Final[dict[Any, tuple[str, Callable[[object], bool]]]] = {
    bool: ("true or false", lambda v: isinstance(v, bool)),
    int: ("an integer", _is_int),
    float: ("a number", _is_number),
    str: ("a string", lambda v: isinstance(v, str)),
}


def _show_for(key: str, value: object) -> str:
    """``_show``, except that a scalar under a secret key is described, never shown."""
    if is_secret(key) and isinstance(value, str | int | float) and not isinstance(value, bool):
        return f"a {'string' if isinstance(value, str) else 'number'} (not shown: it may be a key)"
    return show_value(value)


def _wrong_type(key: str, expect: str, value: object) -> ConfigError:
    rule = rule_for(key)
    return ConfigError(
        f"{key}: expected {rule.expect if rule else expect}, got {_show_for(key, value)}", key=key
    )


def _coerce(key: str, hint: Any, kind: str | None, value: object) -> object:
    """Turn a YAML value into the annotated type, or raise ConfigError naming ``key``."""
    optional, hint = _split_optional(hint)
    if value is None and optional:
        return None
    if kind in ("duration", "size"):
        try:
            return parse_duration(value) if kind == "duration" else parse_size(value)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}", key=key) from None
    if _is_section(hint):
        return _build(hint, value, key)
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise _wrong_type(key, "a list", value)
        item_hint = typing.get_args(hint)[0]
        items = [_item(f"{key}[{i}]", item_hint, v) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint not in _SCALARS:
        raise TypeError(f"{key}: the loader does not support the annotation {hint!r}")
    expect, accepts = _SCALARS[hint]
    if not accepts(value):
        raise _wrong_type(key, expect + (" or null" if optional else ""), value)
    return float(typing.cast(float, value)) if hint is float else value


def _item(key: str, hint: Any, raw: object) -> object:
    return _check(key, raw, _coerce(key, hint, None, raw))


def _check(key: str, raw: object, value: object) -> object:
    """Apply the key's rule to a coerced value; ``raw`` is what the user wrote."""
    rule = rule_for(key)
    if rule is None or value is None:
        return value
    if rule.normalize is not None:
        value = rule.normalize(value)
    reason = ""
    try:
        ok = rule.check(value)
    except ValueError as exc:
        ok, reason = False, f" ({exc})"
    if not ok:
        raise ConfigError(
            f"{key}: expected {rule.expect}, got {_show_for(key, raw)}{reason}", key=key
        )
    return value


def _unknown_key(prefix: str, name: str, cls: type) -> ConfigError:
    dotted = _join(prefix, name)
    import difflib  # only on this error path: it costs the idle process 0.2 MiB

    close = difflib.get_close_matches(name, list(_fields(cls)), n=1)
    if is_secret(prefix) and not close:
        # Not a typo of a real key, so perhaps a key pasted in the wrong place: not shown.
        known = ", ".join(_fields(cls))
        return ConfigError(
            f"unknown key under '{prefix}' (name not shown: it may be a key; "
            f"expected one of {known})",
            key=prefix,
        )
    hint = f" (did you mean '{_join(prefix, close[0])}'?)" if close else ""
    what = "key" if prefix else "section"
    return ConfigError(f"unknown {what} '{dotted}'{hint}", key=dotted)


def _build(cls: type, data: object, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{prefix}: expected a mapping of keys, got {_show_for(prefix, data)}", key=prefix
        )
    fields = _fields(cls)
    for name in data:
        if name not in fields:
            raise _unknown_key(prefix, str(name), cls)
    values: dict[str, object] = {}
    for name, (f, hint) in fields.items():
        if name in data:
            key = _join(prefix, name)
            raw = data[name]
            values[name] = _check(key, raw, _coerce(key, hint, f.metadata.get("kind"), raw))
    return cls(**values)


def _override_path(dotted: str) -> list[str]:
    """Check a dotted override key against the schema and split it."""
    parts = dotted.split(".")
    cls: type = Config
    for depth, name in enumerate(parts):
        prefix = ".".join(parts[:depth])
        if name not in _fields(cls):
            error = _unknown_key(prefix, name, cls)
            error.from_override = True
            raise error
        inner = _split_optional(_fields(cls)[name][1])[1]
        if depth < len(parts) - 1:
            if not _is_section(inner):
                error = ConfigError(
                    f"unknown key '{dotted}' ('{_join(prefix, name)}' has no keys)", key=dotted
                )
                error.from_override = True
                raise error
            cls = inner
    return parts


def _merge_overrides(
    data: Mapping[Any, Any], overrides: Mapping[str, object], *, keep: bool = False
) -> dict[Any, Any]:
    """A copy of ``data`` with each dotted override set (``keep``: only where ``data`` has
    no value yet); ``data`` itself is not touched."""
    merged = dict(data)
    for dotted, value in overrides.items():
        *sections, leaf = _override_path(dotted)
        node = merged
        for name in sections:
            child = node.get(name)
            if child is not None and not isinstance(child, Mapping):
                break  # The file's section is malformed; _build reports it against the file.
            node[name] = child = dict(child or {})
            node = child
        else:
            if not (keep and leaf in node):
                node[leaf] = value
    return merged


def config_from_mapping(
    data: object,
    *,
    overrides: Mapping[str, object] | None = None,
    defaults: Mapping[str, object] | None = None,
) -> Config:
    """Build a validated ``Config`` from parsed YAML (None or {} means all defaults).

    ``data`` is validated as it is; then ``overrides``, dotted keys (``"server.port"``) to
    values, are applied on top and validated the same way (an error there has
    ``from_override`` set). ``defaults`` fill the keys ``data`` leaves out. Raises
    ConfigError with a one-line message naming the key.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"expected a mapping of sections at the top level, got {show_value(data)}"
        )
    if defaults:
        data = _merge_overrides(data, defaults, keep=True)
    config = typing.cast(Config, _build(Config, data, ""))
    if not overrides:
        return config
    merged = _merge_overrides(data, overrides)
    try:
        return typing.cast(Config, _build(Config, merged, ""))
    except ConfigError as exc:
        # The data passed on its own: whatever fails now came with the overrides.
        exc.from_override = True
        raise


def load_config(
    path: str | None = None,
    *,
    overrides: Mapping[str, object] | None = None,
    defaults: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Load and validate the configuration.

    ``path`` None falls back to ``$CLAWPROXY_CONFIG`` (``env`` defaults to ``os.environ``);
    with neither, every key takes its default. The file is validated as written, then
    ``overrides`` (dotted keys) win over it; ``defaults`` fill only what the file leaves
    out. Raises ConfigError, prefixed with the file path when the file is to blame.
    """
    if path is None:
        path = (os.environ if env is None else env).get(CONFIG_ENV_VAR) or None
    if path is None:
        data = None
    else:
        # Imported here: PyYAML costs ~1.3 MiB of RSS, and most appliances run on defaults.
        from clawproxy.config.yamlfile import read_yaml

        data = read_yaml(path)
    try:
        return config_from_mapping(data, overrides=overrides, defaults=defaults)
    except ConfigError as exc:
        if path is None or exc.from_override:
            raise
        raise ConfigError(f"{path}: {exc}", key=exc.key) from None
