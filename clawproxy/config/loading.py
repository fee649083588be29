"""The gateway's configuration: typed sections with a default for every key, and its loader.

The YAML layout of the original design is the contract (sections ``server``, ``model``,
``gateway``, ``logging``); new keys extend it (``upstream``, ``auth``, and sections nested in
sections, such as ``gateway.rate_limit``). Durations are stored as float seconds, sizes
as int bytes.

Theory of operation: the frozen dataclasses below *are* the schema. The loader walks them
with ``dataclasses.fields`` and ``typing.get_type_hints``, so adding a section means adding a
dataclass and a field on ``Config``, plus any rules in ``RULES``; the loader itself does not
change. Every value goes through two steps, both named by its dotted key (``server.port``):

1. Coercion by annotation (``str``, ``int``, ``float``, ``bool``, ``X | None``, ``list[X]``,
   ``tuple[X, ...]``, a nested section) or by the field's metadata kind (``DURATION``:
   ``"30s"`` -> 30.0; ``SIZE``: ``"1MiB"`` -> 1048576). A bool never passes for a number,
   because YAML ``true`` would otherwise become 1.
2. The rule for that key in ``RULES``: what is expected, a predicate, an optional normaliser.

Every failure is a ``ConfigError`` whose message is one line starting with the key, so a typo
in a long file is found from a single log line. Ports may be 0, meaning "let the OS pick a
free port" (tests and the demo rely on it). A section written as an empty YAML key (all of
its keys commented out) is null, and counts as all defaults.

Lists get a rule per item too (``ITEM_RULES``), reported with the index (``key[2]``). Keys in
``SECRET_KEYS`` hold API keys: their errors say what is wrong and where, never the value.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Final, NamedTuple

from clawproxy.units import (
    KIB,
    MIB,
    parse_duration,
    parse_endpoint,
    parse_http_url,
    parse_size,
    show_value,
)

CONFIG_ENV_VAR: Final = "CLAWPROXY_CONFIG"

# Field metadata markers: the loader parses these fields with parse_duration / parse_size.
DURATION: Final = {"kind": "duration"}
SIZE: Final = {"kind": "size"}


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    # Bounds the wait for Ollama's first byte and any silence between its chunks.
    timeout: float = field(default=30.0, metadata=DURATION)
    max_body_bytes: int = field(default=1 * MIB, metadata=SIZE)
    # h11's own default and what nginx/Envoy/HAProxy use in the same range (RELIABILITY 1.1).
    max_header_bytes: int = field(default=16 * KIB, metadata=SIZE)
    max_request_line_bytes: int = field(default=8 * KIB, metadata=SIZE)
    max_headers: int = 100
    # Longer than nginx's upstream keepalive_timeout (60s), so nginx always closes first.
    keepalive_timeout: float = field(default=75.0, metadata=DURATION)
    max_requests_per_connection: int = 1000
    # Absolute deadlines from the first byte of a request head / body (slowloris, slow POST).
    header_timeout: float = field(default=10.0, metadata=DURATION)
    body_timeout: float = field(default=30.0, metadata=DURATION)
    max_connections: int = 2048
    # A client that accepts no bytes for this long is dropped (nginx send_timeout).
    send_timeout: float = field(default=60.0, metadata=DURATION)
    drain_timeout: float = field(default=30.0, metadata=DURATION)
    # Peers whose X-Forwarded-For is believed (IPs or CIDRs). Loopback by default: the usual
    # deployment is nginx on the same host, where every peer is 127.0.0.1 and, without XFF,
    # all clients would share one rate-limit bucket. Direct local clients are trusted anyway.
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    # While a stream waits for its first token (a model can take minutes to load), an SSE
    # comment every this often keeps nginx's proxy_read_timeout from cutting it; 0 disables.
    heartbeat_interval: float = field(default=15.0, metadata=DURATION)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str = "qwen3:32b"
    endpoint: str = "http://localhost:11434"
    context_length: int = 4096
    temperature: float = 0.7
    top_p: float = 0.9
    # When set, the only model names a request may use; empty means whatever Ollama has.
    allowed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    connect_timeout: float = field(default=5.0, metadata=DURATION)
    # Idle keep-alive connections kept per endpoint; busy ones are bounded by admission.
    pool_size: int = 8
    # A single NDJSON line longer than this is a broken upstream, not a token.
    max_line_bytes: int = field(default=1 * MIB, metadata=SIZE)


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    # Sustained requests per second per client (API key label, else client IP); 0 = off.
    requests_per_second: float = 0.0
    # Requests a rested client may send at once before the sustained rate applies.
    burst: int = 10


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    debug_port: int = 18789
    debug_host: str = "127.0.0.1"
    max_concurrent: int = 4
    queue_size: int = 3
    # None means "same as server.timeout".
    queue_timeout: float | None = field(default=None, metadata=DURATION)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    # Bearer token the admin port requires; None: no token (the port is loopback-only).
    admin_token: str | None = None
    # keep_alive sent with a hot load (POST /v1/model/load); None keeps it until unloaded.
    model_keep_alive: float | None = field(default=300.0, metadata=DURATION)
    # A hot load waits this long for Ollama: a large model takes minutes to read from disk.
    model_load_timeout: float = field(default=300.0, metadata=DURATION)


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "info"
    # None logs to stderr.
    file: str | None = None


@dataclass(frozen=True, slots=True)
class AuthConfig:
    # Accepted bearer keys. Auth is on when this or api_keys_file is set.
    api_keys: tuple[str, ...] = ()
    # One key a line ("KEY" or "LABEL KEY"); reread on SIGHUP. See clawproxy.auth.
    api_keys_file: str | None = None


@dataclass(frozen=True, slots=True)
class GpuConfig:
    # Sample NVIDIA GPUs through NVML; without a driver the sampler only reports why not.
    enabled: bool = True
    interval: float = field(default=5.0, metadata=DURATION)


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    # Alert when a GPU's memory use reaches this percentage; None turns the alert off.
    gpu_memory_percent: float | None = 95.0
    # Re-arm only once use falls this many points below the threshold (no flood at the line).
    hysteresis_percent: float = 5.0
    # http:// URL that receives each alert as a JSON POST; None: the log warning only.
    webhook_url: str | None = None
    webhook_timeout: float = field(default=3.0, metadata=DURATION)


@dataclass(frozen=True, slots=True)
class UiConfig:
    # The built-in web UI on the public port (/ui, /ui/chat, /ui/internals, /ui/api/stats);
    # false removes those routes, so they answer 404 like any unknown path.
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    gpu: GpuConfig = field(default_factory=GpuConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    ui: UiConfig = field(default_factory=UiConfig)


def queue_timeout_s(config: Config) -> float:
    """How long a queued request may wait for a slot: ``gateway.queue_timeout`` or its fallback."""
    queued = config.gateway.queue_timeout
    return config.server.timeout if queued is None else queued


class ConfigError(Exception):
    """An unusable configuration. ``str()`` is one line that starts with the file (if any)
    and the dotted key; ``key`` holds that key (None for whole-file problems)."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        # Set when the bad value came from ``overrides``, so no file path is blamed.
        self.from_override = False


# ---------------------------------------------------------------------------------------------
# Validation rules: one table, keyed by dotted key, checked after coercion.


class Rule(NamedTuple):
    """A check on one key. ``expect`` completes "expected ..."; ``check`` returns False or
    raises ValueError (whose message is appended as the reason); ``normalize`` runs first."""

    expect: str
    check: Callable[[Any], bool]
    normalize: Callable[[Any], Any] | None = None


def _int_range(low: int, high: int) -> Rule:
    return Rule(f"an integer from {low} to {high}", lambda v: low <= v <= high)


def _int_at_least(low: int) -> Rule:
    return Rule(f"an integer >= {low}", lambda v: v >= low)


def _size_at_least(low: int) -> Rule:
    return Rule(f"a size of at least {low} bytes", lambda v: v >= low)


def _valid_endpoint(url: str) -> bool:
    parse_endpoint(url)
    return True


def _valid_http_url(url: str) -> bool:
    parse_http_url(url)
    return True


# A key is presented in one Authorization header, which clawproxy.auth caps at 4 KiB.
MAX_API_KEY_BYTES: Final = 1024
# Labels end up in logs and metrics: a conservative alphabet keeps them injection-free.
_KEY_LABEL = re.compile(r"[A-Za-z0-9._@+-]{1,64}")


def check_api_key(key: str) -> None:
    """Raise ValueError unless ``key`` is 1..MAX_API_KEY_BYTES printable ASCII characters
    with no whitespace. The message never contains the key."""
    if not key:
        raise ValueError("the key is empty")
    if len(key) > MAX_API_KEY_BYTES:
        raise ValueError(f"the key is longer than {MAX_API_KEY_BYTES} characters")
    # "!" to "~": printable ASCII minus space, so no whitespace or control characters.
    if not all("!" <= c <= "~" for c in key):
        raise ValueError("the key has whitespace, control or non-ASCII characters")


def check_key_label(label: str) -> None:
    """Raise ValueError unless ``label`` is 1-64 of ``A-Z a-z 0-9 . _ @ + -``."""
    if not _KEY_LABEL.fullmatch(label):
        raise ValueError("a label is 1 to 64 of the characters A-Z a-z 0-9 . _ @ + -")


def _valid_api_key(key: str) -> bool:
    check_api_key(key)
    return True


def _distinct_keys(keys: tuple[str, ...]) -> bool:
    first: dict[str, int] = {}
    for index, key in enumerate(keys):
        if key in first:
            raise ValueError(f"entries [{first[key]}] and [{index}] are the same key")
        first[key] = index
    return True


def _valid_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text)
    except ValueError:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            return False
        raise ValueError(f"host bits are set; the network is {network}") from None
    return True


_PORT: Final = _int_range(0, 65535)  # 0 = let the OS pick a free port.
_NON_EMPTY: Final = Rule("a non-empty string", lambda v: bool(v.strip()))
_TIMEOUT: Final = Rule("a duration greater than 0, such as '30s'", lambda v: v > 0)
_LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")

RULES: Final[dict[str, Rule]] = {
    "server.host": _NON_EMPTY,
    "server.port": _PORT,
    "server.timeout": _TIMEOUT,
    "server.max_body_bytes": _size_at_least(1),
    "server.max_header_bytes": _size_at_least(1024),
    # "POST /v1/chat/completions HTTP/1.1" is 34 bytes; below 64 no real client gets through.
    "server.max_request_line_bytes": _size_at_least(64),
    "server.max_headers": _int_at_least(1),
    "server.keepalive_timeout": _TIMEOUT,
    "server.max_requests_per_connection": _int_at_least(1),
    "server.header_timeout": _TIMEOUT,
    "server.body_timeout": _TIMEOUT,
    "server.max_connections": _int_at_least(1),
    "server.send_timeout": _TIMEOUT,
    "server.drain_timeout": _TIMEOUT,
    "model.name": _NON_EMPTY,
    "model.endpoint": Rule("an http://host[:port] URL", _valid_endpoint),
    "model.context_length": _int_at_least(1),
    "model.temperature": Rule("a number from 0 to 2", lambda v: 0 <= v <= 2),
    "model.top_p": Rule("a number greater than 0 and at most 1", lambda v: 0 < v <= 1),
    "upstream.connect_timeout": _TIMEOUT,
    "upstream.pool_size": _int_at_least(0),
    "upstream.max_line_bytes": _size_at_least(1024),
    "gateway.debug_port": _PORT,
    "gateway.debug_host": _NON_EMPTY,
    "gateway.max_concurrent": _int_at_least(1),
    "gateway.queue_size": _int_at_least(0),
    "server.heartbeat_interval": Rule("a duration, 0 to disable, such as '15s'", lambda v: v >= 0),
    "gateway.queue_timeout": Rule("null or a duration greater than 0", lambda v: v > 0),
    "logging.level": Rule(f"one of {', '.join(_LOG_LEVELS)}", _LOG_LEVELS.__contains__, str.lower),
    "logging.file": Rule("null (stderr) or a non-empty path", lambda v: bool(v.strip())),
    "gateway.rate_limit.requests_per_second": Rule("a number >= 0 (0 = off)", lambda v: v >= 0),
    "gateway.rate_limit.burst": _int_at_least(1),
    "auth.api_keys": Rule("a list of distinct keys", _distinct_keys),
    "auth.api_keys_file": Rule("null or a non-empty path", lambda v: bool(v.strip())),
    "gateway.admin_token": Rule(
        f"null or 1 to {MAX_API_KEY_BYTES} printable ASCII characters without whitespace",
        _valid_api_key,
    ),
    "gateway.model_keep_alive": Rule(
        "null (keep loaded) or a duration greater than 0", lambda v: v > 0
    ),
    "gateway.model_load_timeout": _TIMEOUT,
    "gpu.interval": Rule("a duration of at least 10ms", lambda v: v >= 0.01),
    "alerts.gpu_memory_percent": Rule(
        "null (off) or a number greater than 0 and at most 100", lambda v: 0 < v <= 100
    ),
    "alerts.hysteresis_percent": Rule("a number from 0 to 50", lambda v: 0 <= v <= 50),
    "alerts.webhook_url": Rule("null or an http://host[:port][/path] URL", _valid_http_url),
    "alerts.webhook_timeout": _TIMEOUT,
}

# Rules for each item of a list key, reported as ``key[index]``.
ITEM_RULES: Final[dict[str, Rule]] = {
    "server.trusted_proxies": Rule(
        "an IP address or CIDR network such as '10.0.0.0/8'", _valid_network
    ),
    "auth.api_keys": Rule(
        f"a non-empty string of printable ASCII without whitespace, at most "
        f"{MAX_API_KEY_BYTES} characters",
        _valid_api_key,
    ),
}

# Keys (and everything under them) whose values may be API keys: errors never show a value.
# "auth" itself is here because "auth: sk-..." is an easy mistake to make.
SECRET_KEYS: Final = frozenset({"auth", "auth.api_keys", "gateway.admin_token"})


def _rule_for(key: str) -> Rule | None:
    if key.endswith("]"):
        return ITEM_RULES.get(key.partition("[")[0])
    return RULES.get(key)


def _is_secret(key: str) -> bool:
    return key.partition("[")[0] in SECRET_KEYS


# ---------------------------------------------------------------------------------------------
# The generic loader: walks the dataclasses.

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
    if _is_secret(key) and isinstance(value, str | int | float) and not isinstance(value, bool):
        return f"a {'string' if isinstance(value, str) else 'number'} (not shown: it may be a key)"
    return show_value(value)


def _wrong_type(key: str, expect: str, value: object) -> ConfigError:
    rule = _rule_for(key)
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
    rule = _rule_for(key)
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
    if _is_secret(prefix) and not close:
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


def _merge_overrides(data: Mapping[Any, Any], overrides: Mapping[str, object]) -> dict[Any, Any]:
    """A copy of ``data`` with each dotted override set; ``data`` itself is not touched."""
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
            node[leaf] = value
    return merged


def _came_from(key: str | None, overrides: Mapping[str, object]) -> bool:
    return key is not None and any(
        key == k or key.startswith((k + ".", k + "[")) for k in overrides
    )


def config_from_mapping(data: object, *, overrides: Mapping[str, object] | None = None) -> Config:
    """Build a validated ``Config`` from parsed YAML (None or {} means all defaults).

    ``overrides`` maps dotted keys (``"server.port"``) to values applied on top of ``data``
    and validated the same way. Raises ConfigError with a one-line message naming the key.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"expected a mapping of sections at the top level, got {show_value(data)}"
        )
    overrides = overrides or {}
    merged = _merge_overrides(data, overrides)
    try:
        return typing.cast(Config, _build(Config, merged, ""))
    except ConfigError as exc:
        exc.from_override = exc.from_override or _came_from(exc.key, overrides)
        raise


def load_config(
    path: str | None = None,
    *,
    overrides: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Load and validate the configuration.

    ``path`` None falls back to ``$CLAWPROXY_CONFIG`` (``env`` defaults to ``os.environ``);
    with neither, every key takes its default. ``overrides`` are dotted keys that win over the
    file. Raises ConfigError, prefixed with the file path when the file is to blame.
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
        return config_from_mapping(data, overrides=overrides)
    except ConfigError as exc:
        if path is None or exc.from_override:
            raise
        raise ConfigError(f"{path}: {exc}", key=exc.key) from None
