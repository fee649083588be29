"""Validation rules: one table, keyed by dotted key, checked after coercion.

Each ``Rule`` in ``RULES`` says what is expected, a predicate, an optional normaliser; the
loader (``config.loading``) applies it to the value once coerced to the field's type, and
turns a failure into a ``ConfigError`` whose one line starts with the key. Ports may be 0,
meaning "let the OS pick a free port" (tests and the demo rely on it).

Lists get a rule per item too (``ITEM_RULES``), reported with the index (``key[2]``). Keys in
``SECRET_KEYS`` hold API keys: their errors say what is wrong and where, never the value.
``check_api_key`` and ``check_key_label`` are shared with the keys file (``policy.auth``),
so a key is valid or not wherever it is written.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from clawproxy.net import parse_endpoint, parse_http_url, parse_node_url


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


def _valid_node_url(url: str) -> bool:
    parse_node_url(url)
    return True


# Node names end up in logs, metrics labels and a response header: a conservative alphabet.
_NODE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _valid_node(node: Any) -> bool:
    """What one ``nodes`` entry needs beyond its keys' own rules."""
    if not node.name:
        raise ValueError("'name' is required")
    if not node.url:
        raise ValueError("'url' is required")
    tls = node.tls
    uses_tls = tls.ca_file or tls.cert_file or tls.key_file or not tls.verify
    if uses_tls and not node.url.lower().startswith("https://"):
        raise ValueError(f"node '{node.name}' has a tls block but an http:// url")
    if tls.key_file and not tls.cert_file:
        raise ValueError(f"node '{node.name}': tls.key_file needs tls.cert_file")
    return True


def _distinct_node_names(nodes: tuple[Any, ...]) -> bool:
    first: dict[str, int] = {}
    for index, node in enumerate(nodes):
        if node.name in first:
            raise ValueError(
                f"entries [{first[node.name]}] and [{index}] share the name '{node.name}'"
            )
        first[node.name] = index
    return True


def _valid_redis_url(url: str) -> bool:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("redis", "rediss"):
        raise ValueError("the URL must start with redis:// or rediss://")
    authority, _, db = rest.partition("/")
    if db and not db.isdigit():
        raise ValueError("the database must be a number, as in redis://host:6379/0")
    parse_endpoint("http://" + authority.rpartition("@")[2])
    return True


def _valid_http_url(url: str) -> bool:
    parse_http_url(url)
    return True


def _valid_webhook_url(url: str) -> bool:
    """http:// or https://, otherwise the rules of ``parse_http_url`` (telemetry.webhook)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise ValueError("the URL must start with http:// or https://")
    parse_http_url("http://" + rest)
    return True


# Alert events (alerts.events) and webhook formats (telemetry.alertformat.FORMATS).
_ALERT_EVENTS: Final = (
    "gpu_memory",
    "gpu_memory_resolved",
    "node_ejected",
    "node_back",
    "model_down",
    "queue_full",
    "upstream_errors",
)
_WEBHOOK_FORMATS: Final = ("generic", "wecom", "dingtalk", "feishu", "slack")


def _valid_webhook(hook: Any) -> bool:
    """What one ``alerts.webhooks`` entry needs beyond its keys' own rules."""
    if not hook.url:
        raise ValueError("'url' is required")
    if hook.secret is not None and hook.format not in ("dingtalk", "feishu"):
        raise ValueError(f"a secret signs dingtalk and feishu messages, not {hook.format}")
    if hook.ca_file and not hook.url.lower().startswith("https://"):
        raise ValueError("ca_file is set but the url is http://")
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


# A DNS name (labels of letters, digits and inner hyphens), an IPv4 address or a bracketed
# IPv6 one: what a Host header or an origin names, lower case, without a port.
_DNS_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_HOST_NAME = rf"(?:{_DNS_LABEL}(?:\.{_DNS_LABEL})*|\[[0-9a-f:.]+\])"
_HOST: Final = re.compile(_HOST_NAME)
_ORIGIN: Final = re.compile(rf"https?://{_HOST_NAME}(?::[1-9][0-9]{{0,4}})?")
_DEFAULT_PORTS: Final = {"http": ":80", "https": ":443"}


def host_form(text: str) -> str:
    """A host name as a Host header carries it: lower case, an IPv6 address in brackets."""
    text = text.strip().lower()
    return f"[{text}]" if ":" in text and not text.startswith("[") else text


def origin_form(text: str) -> str:
    """An origin as browsers serialise it: lower case, no trailing slash, no default port."""
    text = text.strip().lower().rstrip("/")
    scheme = text.partition("://")[0]
    default = _DEFAULT_PORTS.get(scheme)
    return text[: -len(default)] if default and text.endswith(default) else text


def _valid_origin(origin: str) -> bool:
    if origin == "*":
        return True
    if _ORIGIN.fullmatch(origin) is None:
        return False
    port = origin.partition("://")[2].rpartition("]")[2].partition(":")[2]
    return not port or int(port) <= 65535


_PORT: Final = _int_range(0, 65535)  # 0 = let the OS pick a free port.
_NON_EMPTY: Final = Rule("a non-empty string", lambda v: bool(v.strip()))
_TIMEOUT: Final = Rule("a duration greater than 0, such as '30s'", lambda v: v > 0)
_LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")

RULES: Final[dict[str, Rule]] = {
    "server.host": _NON_EMPTY,
    "server.port": _PORT,
    "server.timeout": _TIMEOUT,
    "server.max_body_bytes": _size_at_least(1),
    "server.max_embedding_inputs": _int_at_least(1),
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
    "gateway.admin_max_connections": _int_at_least(1),
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
    "alerts.webhook_url": Rule("null or an http[s]://host[:port][/path] URL", _valid_webhook_url),
    "alerts.webhook_timeout": _TIMEOUT,
    "alerts.gpu_memory_used": _size_at_least(1),
    "alerts.webhook_connect_timeout": _TIMEOUT,
    "alerts.webhook_retries": _int_range(0, 5),
    "alerts.webhook_retry_delay": Rule("a duration >= 0, such as '1s'", lambda v: v >= 0),
    "alerts.webhooks.url": Rule("an http[s]://host[:port][/path] URL", _valid_webhook_url),
    "alerts.webhooks.format": Rule(
        f"one of {', '.join(_WEBHOOK_FORMATS)}", _WEBHOOK_FORMATS.__contains__, str.lower
    ),
    "alerts.webhooks.secret": Rule("null or a non-empty string", lambda v: bool(v.strip())),
    "alerts.webhooks.ca_file": Rule("null or a non-empty path", lambda v: bool(v.strip())),
    "alerts.min_interval": Rule("a duration >= 0, such as '5m'", lambda v: v >= 0),
    "alerts.queue_full_per_minute": _int_at_least(1),
    "alerts.upstream_errors_per_minute": _int_at_least(1),
    "nodes": Rule("a list of nodes with distinct names", _distinct_node_names),
    "nodes.name": Rule(
        "1 to 64 of the characters A-Z a-z 0-9 . _ -", lambda v: _NODE_NAME.fullmatch(v) is not None
    ),
    "nodes.url": Rule("an http://host[:port] or https://host[:port] URL", _valid_node_url),
    "nodes.max_concurrent": _int_at_least(1),
    "nodes.gpu_metrics_url": Rule("null or an http[s]://host[:port]/path URL", _valid_webhook_url),
    "nodes.weight": Rule("a number greater than 0", lambda v: v > 0),
    "nodes.tls.ca_file": Rule("null or a non-empty path", lambda v: bool(v.strip())),
    "nodes.tls.cert_file": Rule("null or a non-empty path", lambda v: bool(v.strip())),
    "nodes.tls.key_file": Rule("null or a non-empty path", lambda v: bool(v.strip())),
    "routing.max_attempts": _int_range(1, 16),
    "routing.eject_after": _int_at_least(1),
    "routing.eject_base": _TIMEOUT,
    "routing.eject_max": _TIMEOUT,
    "routing.busy_backoff": _TIMEOUT,
    "routing.probe_interval": Rule("a duration of at least 100ms", lambda v: v >= 0.1),
    "routing.discovery_interval": Rule("a duration of at least 1s", lambda v: v >= 1),
    "routing.affinity": Rule(
        "one of off, session, prefix", ("off", "session", "prefix").__contains__, str.lower
    ),
    "routing.affinity_margin": Rule("a number >= 0", lambda v: v >= 0),
    "openai.reasoning_field": Rule(
        "one of reasoning_content, reasoning, both",
        ("reasoning_content", "reasoning", "both").__contains__,
    ),
    "coordination.backend": Rule("one of local, redis", ("local", "redis").__contains__, str.lower),
    "coordination.url": Rule(
        "null or a redis://host[:port][/db] or rediss:// URL", _valid_redis_url
    ),
    "coordination.password_file": Rule("null or a non-empty path", lambda v: bool(v.strip())),
    "coordination.key_prefix": Rule(
        "1 to 64 of the characters A-Z a-z 0-9 . _ : -",
        lambda v: re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", v) is not None,
    ),
    "coordination.op_timeout": Rule("a duration from 1ms to 5s", lambda v: 0.001 <= v <= 5),
    "coordination.lease_ttl": Rule("a duration of at least 1s", lambda v: v >= 1),
    "coordination.on_error": Rule(
        "one of degrade, fail_closed", ("degrade", "fail_closed").__contains__, str.lower
    ),
}

# Rules for each item of a list key, reported as ``key[index]``.
ITEM_RULES: Final[dict[str, Rule]] = {
    "server.trusted_proxies": Rule(
        "an IP address or CIDR network such as '10.0.0.0/8'", _valid_network
    ),
    "server.allowed_hosts": Rule(
        "a host name or IP address without a port, such as 'gw.example'",
        lambda v: _HOST.fullmatch(v) is not None,
        host_form,
    ),
    "server.cors.allow_origins": Rule(
        "'*' or an origin such as 'https://app.example' or 'http://10.0.0.5:3000' "
        "(scheme, host and port only)",
        _valid_origin,
        origin_form,
    ),
    "nodes": Rule("a node with a name and a url", _valid_node),
    "alerts.webhooks": Rule("a webhook with a url", _valid_webhook),
    "alerts.webhooks.events": Rule(
        f"one of {', '.join(_ALERT_EVENTS)}", _ALERT_EVENTS.__contains__, str.lower
    ),
    "nodes.models": Rule("a model name", lambda v: bool(v.strip()) and len(v) <= 256),
    "auth.api_keys": Rule(
        f"a non-empty string of printable ASCII without whitespace, at most "
        f"{MAX_API_KEY_BYTES} characters",
        _valid_api_key,
    ),
}

# Keys (and everything under them) whose values may be API keys: errors never show a value.
# "auth" itself is here because "auth: sk-..." is an easy mistake to make.
# Webhook URLs too: a chat robot's URL is its credential (WeCom's key, DingTalk's
# access_token, Slack's path), and alerts.webhooks items hold a signing secret.
SECRET_KEYS: Final = frozenset(
    {
        "auth",
        "auth.api_keys",
        "gateway.admin_token",
        "coordination.url",
        "alerts.webhook_url",
        "alerts.webhooks",
        "alerts.webhooks.secret",
    }
)


# An item's index in a dotted key: ``nodes[1].url`` has the rule of ``nodes.url``.
_INDEX: Final = re.compile(r"\[\d+\]")


def rule_for(key: str) -> Rule | None:
    """The rule for a dotted key, or for an item of a list key (``key[2]``); None if none."""
    base = _INDEX.sub("", key)
    if key.endswith("]"):
        return ITEM_RULES.get(base)
    return RULES.get(base)


def is_secret(key: str) -> bool:
    """Whether the value at this key (or an item under it) may be an API key."""
    return key.partition("[")[0] in SECRET_KEYS
