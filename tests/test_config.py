"""Tests for the configuration loader: defaults, the design YAML, overrides, every error."""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from clawproxy.config import (
    CONFIG_ENV_VAR,
    ITEM_RULES,
    RULES,
    SECRET_KEYS,
    AuthConfig,
    Config,
    ConfigError,
    LoggingConfig,
    RateLimitConfig,
    ServerConfig,
    check_api_key,
    check_key_label,
    config_from_mapping,
    config_keys,
    load_config,
    queue_timeout_s,
)
from clawproxy.net import parse_endpoint, parse_http_url
from clawproxy.units import parse_duration, parse_size

EXAMPLE = Path(__file__).resolve().parent.parent / "contrib" / "config.example.yaml"

DESIGN_YAML = """\
server:  {port: 8080, host: "0.0.0.0", timeout: 30s}
model:   {name: "qwen3:32b", endpoint: "http://localhost:11434", context_length: 4096,
          temperature: 0.7, top_p: 0.9}
gateway: {debug_port: 18789, max_concurrent: 4, queue_size: 3}
logging: {level: "info", file: "/var/log/clawproxy.log"}
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "clawproxy.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def error_of(data: object, **overrides: object) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(data, overrides=overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- defaults, files, env, overrides -------------------------------------------------------


def test_no_file_gives_defaults() -> None:
    assert load_config(env={}) == Config()
    assert config_from_mapping(None) == Config()
    assert config_from_mapping({}) == Config()


def test_design_yaml_loads_to_expected_values(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, DESIGN_YAML), env={})
    assert config.server.port == 8080
    assert config.server.host == "0.0.0.0"
    assert config.server.timeout == 30.0
    assert config.model.name == "qwen3:32b"
    assert config.model.endpoint == "http://localhost:11434"
    assert (config.model.context_length, config.model.temperature) == (4096, 0.7)
    assert config.model.top_p == 0.9
    assert (config.gateway.debug_port, config.gateway.max_concurrent) == (18789, 4)
    assert config.gateway.queue_size == 3
    assert config.logging == LoggingConfig(level="info", file="/var/log/clawproxy.log")


def test_env_var_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "server: {port: 9123}\n")
    assert load_config(env={CONFIG_ENV_VAR: path}).server.port == 9123
    # An explicit path beats the environment; an empty variable means "no file".
    other = tmp_path / "other.yaml"
    other.write_text("server: {port: 9124}\n", encoding="utf-8")
    assert load_config(str(other), env={CONFIG_ENV_VAR: path}).server.port == 9124
    assert load_config(env={CONFIG_ENV_VAR: ""}) == Config()


def test_env_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV_VAR, write(tmp_path, "gateway: {queue_size: 0}\n"))
    assert load_config().gateway.queue_size == 0


def test_overrides_win_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, "server: {port: 8080, host: '::'}\nmodel: {name: llama3}\n")
    config = load_config(
        path, overrides={"server.port": 9000, "model.endpoint": "http://127.0.0.1:1"}, env={}
    )
    assert config.server.port == 9000
    assert config.server.host == "::"
    assert config.model == dataclasses.replace(
        Config().model, name="llama3", endpoint="http://127.0.0.1:1"
    )


def test_overrides_fill_absent_sections_and_leave_data_untouched() -> None:
    data: dict[str, object] = {"server": {"port": 1}}
    config = config_from_mapping(data, overrides={"gateway.queue_timeout": "2s"})
    assert config.gateway.queue_timeout == 2.0
    assert data == {"server": {"port": 1}}


def test_override_errors_are_not_blamed_on_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "server: {port: 8080}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides={"server.port": "x"}, env={})
    assert str(info.value) == "server.port: expected an integer from 0 to 65535, got 'x'"
    with pytest.raises(ConfigError, match=r"^unknown key 'server\.prot' \(did you mean"):
        load_config(path, overrides={"server.prot": 1}, env={})


def test_a_bad_file_value_is_reported_even_when_a_flag_overrides_it(tmp_path: Path) -> None:
    """The file is validated as written, then the flags are applied: a mistake in the file
    cannot hide behind `--port 0` and surface on the next start without it."""
    path = write(tmp_path, "server: {port: 70000}\ngateway: {debug_port: -1}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides={"server.port": 0}, env={})
    assert str(info.value) == f"{path}: server.port: expected an integer from 0 to 65535, got 70000"
    assert not info.value.from_override
    # Same without a file path: the data is checked before the overrides touch it.
    with pytest.raises(ConfigError, match=r"^gateway\.debug_port: ") as info:
        config_from_mapping({"gateway": {"debug_port": "x"}}, overrides={"gateway.debug_port": 0})
    assert not info.value.from_override
    # A malformed section is the file's too, whatever the flags set inside it.
    with pytest.raises(ConfigError, match=r": server: expected a mapping"):
        load_config(write(tmp_path, "server: 8080\n"), overrides={"server.port": 1}, env={})


def test_defaults_sit_under_the_file_and_the_flags(tmp_path: Path) -> None:
    """``defaults`` (what --demo changes) apply only where the file and flags say nothing."""
    path = write(tmp_path, "gateway: {debug_port: 19000}\n")
    demo = {"gateway.debug_port": 0}
    assert load_config(path, defaults=demo, env={}).gateway.debug_port == 19000
    assert load_config(None, defaults=demo, env={}).gateway.debug_port == 0
    over = {"gateway.debug_port": 19001}
    assert load_config(path, overrides=over, defaults=demo, env={}).gateway.debug_port == 19001
    empty = write(tmp_path, "gateway:\n")  # a section with every key commented out
    assert load_config(empty, defaults=demo, env={}).gateway.debug_port == 0


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("server.prot", "unknown key 'server.prot' (did you mean 'server.port'?)"),
        ("sever.port", "unknown section 'sever' (did you mean 'server'?)"),
        ("server.port.x", "unknown key 'server.port.x' ('server.port' has no keys)"),
    ],
)
def test_unknown_override_keys(key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping({}, overrides={key: 1})
    assert str(info.value) == expected


def test_null_section_means_defaults() -> None:
    assert config_from_mapping({"server": None, "logging": {}}) == Config()


def test_normalisation_and_null_values() -> None:
    config = config_from_mapping(
        {"logging": {"level": "WARNING", "file": None}, "model": {"temperature": 1}}
    )
    assert config.logging.level == "warning"
    assert config.logging.file is None
    assert isinstance(config.model.temperature, float)
    assert config.model.temperature == 1.0


def test_queue_timeout_falls_back_to_server_timeout() -> None:
    assert queue_timeout_s(config_from_mapping({"server": {"timeout": "12s"}})) == 12.0
    assert queue_timeout_s(config_from_mapping({"gateway": {"queue_timeout": "500ms"}})) == 0.5


def test_port_zero_means_any_free_port() -> None:
    config = config_from_mapping({"server": {"port": 0}, "gateway": {"debug_port": 0}})
    assert (config.server.port, config.gateway.debug_port) == (0, 0)


def test_config_is_frozen_slotted_and_hashable() -> None:
    config = config_from_mapping({"server": {"port": 1}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server.port = 2  # type: ignore[misc]
    assert not hasattr(config, "__dict__")
    assert not hasattr(config.server, "__dict__")
    assert hash(config) == hash(config_from_mapping({"server": {"port": 1}}))


# --- errors name their key ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"sever": {}}, "unknown section 'sever' (did you mean 'server'?)"),
        ({"server": {"prot": 1}}, "unknown key 'server.prot' (did you mean 'server.port'?)"),
        ({"server": {"zzz": 1}}, "unknown key 'server.zzz'"),
        ({"server": [1]}, "server: expected a mapping of keys, got a list"),
        (
            {"server": {"port": "abc"}},
            "server.port: expected an integer from 0 to 65535, got 'abc'",
        ),
        ({"server": {"port": True}}, "server.port: expected an integer from 0 to 65535, got true"),
        (
            {"server": {"port": 65536}},
            "server.port: expected an integer from 0 to 65535, got 65536",
        ),
        ({"server": {"host": 8080}}, "server.host: expected a non-empty string, got 8080"),
        ({"server": {"host": " "}}, "server.host: expected a non-empty string, got ' '"),
        ({"model": {"temperature": False}}, "model.temperature: expected a number from 0 to 2"),
        ({"model": {"temperature": 2.5}}, "model.temperature: expected a number from 0 to 2"),
        ({"model": {"temperature": math.nan}}, "model.temperature: expected a number"),
        ({"model": {"top_p": 0}}, "model.top_p: expected a number greater than 0 and at most 1"),
        ({"model": {"name": ""}}, "model.name: expected a non-empty string"),
        ({"model": {"context_length": 0}}, "model.context_length: expected an integer >= 1"),
        ({"server": {"timeout": "0s"}}, "server.timeout: expected a duration greater than 0"),
        ({"server": {"timeout": "5x"}}, "server.timeout: unknown duration unit in '5x'"),
        ({"server": {"timeout": True}}, "server.timeout: expected a duration"),
        ({"server": {"timeout": None}}, "server.timeout: expected a duration"),
        ({"server": {"max_header_bytes": "1KB"}}, "server.max_header_bytes: expected a size"),
        ({"server": {"max_body_bytes": 1.5}}, "server.max_body_bytes: expected a size"),
        ({"upstream": {"pool_size": -1}}, "upstream.pool_size: expected an integer >= 0"),
        ({"upstream": {"max_line_bytes": 100}}, "upstream.max_line_bytes: expected a size"),
        ({"gateway": {"max_concurrent": 0}}, "gateway.max_concurrent: expected an integer >= 1"),
        ({"gateway": {"queue_size": -1}}, "gateway.queue_size: expected an integer >= 0"),
        ({"gateway": {"queue_timeout": "0s"}}, "gateway.queue_timeout: expected null or a"),
        ({"gateway": {"debug_port": -1}}, "gateway.debug_port: expected an integer from 0"),
        ({"logging": {"level": "loud"}}, "logging.level: expected one of debug, info, warning"),
        ({"logging": {"level": 3}}, "logging.level: expected one of debug"),
        ({"logging": {"file": ""}}, "logging.file: expected null (stderr) or a non-empty path"),
        ({"logging": {"file": 1}}, "logging.file: expected null (stderr) or a non-empty path"),
        ([1, 2], "expected a mapping of sections at the top level, got a list"),
        ("server", "expected a mapping of sections at the top level, got 'server'"),
    ],
)
def test_errors_name_their_key(data: object, expected: str) -> None:
    assert error_of(data).startswith(expected)


@pytest.mark.parametrize(
    ("endpoint", "reason"),
    [
        ("https://gpu:11434", "https is not supported"),
        ("http://user:pw@gpu:11434", "user info"),
        ("http://gpu:11434/api", "a path is not allowed"),
        ("http://gpu:11434/?x=1", "a query or fragment"),
        ("http://gpu#frag", "a query or fragment"),
        ("http://:11434", "the host is empty"),
        ("http://", "the host is empty"),
        ("gpu:11434", "must start with http://"),
        ("http://gpu:0", "port '0'"),
        ("http://gpu:99999", "port '99999'"),
        ("http://gpu:ab", "port 'ab'"),
        ("http://[nope]:1", "not an IPv6 address"),
        ("http://[::1", "malformed [IPv6] host"),
        ("http://::1:11434", "must be in brackets"),
        ("http://gpu box:1", "not a host name or IPv4 address"),
    ],
)
def test_bad_endpoints(endpoint: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_endpoint(endpoint)
    message = error_of({"model": {"endpoint": endpoint}})
    assert message.startswith("model.endpoint: expected an http://host[:port] URL, got ")
    assert reason in message


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("http://localhost:11434", ("localhost", 11434)),
        ("http://localhost:11434/", ("localhost", 11434)),
        ("HTTP://10.0.0.5", ("10.0.0.5", 80)),
        ("http://[::1]:8000", ("::1", 8000)),
        ("http://[fe80::1]", ("fe80::1", 80)),
        ("http://ollama_gpu-1.lan:1", ("ollama_gpu-1.lan", 1)),
    ],
)
def test_good_endpoints(endpoint: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(endpoint) == expected


# --- files and YAML -------------------------------------------------------------------------


def test_file_errors_are_prefixed_with_the_path(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: abc\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == f"{path}: server.port: expected an integer from 0 to 65535, got 'abc'"
    assert info.value.key == "server.port"


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match=r"absent\.yaml: cannot read the config file: No such"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match=r"absent\.yaml: cannot read"):
        load_config(env={CONFIG_ENV_VAR: path})


def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(str(tmp_path), env={})


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"model: {name: caf\xe9}\n")
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8 text"):
        load_config(str(path), env={})


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("server:\n  port: 8080\n   host: x\n", "line 3"),
        ("server: {port: 8080\n", "line 2"),
        ("server:\n  port: 1\n  port: 2\n", "line 3, column 3: duplicate key 'port'"),
        ("a: 1\n---\nb: 2\n", "line 2"),
    ],
)
def test_bad_yaml_names_the_line(tmp_path: Path, text: str, where: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert message.startswith(f"{path}: invalid YAML at ")
    assert where in message
    assert "\n" not in message


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    path = write(tmp_path, "server: {<<: {port: 1, host: a}, port: 2}\n")
    assert load_config(path, env={}).server == ServerConfig(port=2, host="a")


def test_non_mapping_top_level_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, "- server\n")
    with pytest.raises(ConfigError, match=r"clawproxy\.yaml: expected a mapping of sections"):
        load_config(path, env={})


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "# nothing yet\n"), env={}) == Config()


# --- durations and sizes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30.0),
        ("500ms", 0.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("30", 30.0),
        (" 10 S ", 10.0),
        (".25s", 0.25),
        (0, 0.0),
        (7, 7.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds
    assert isinstance(parse_duration(value), float)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (True, "expected a duration"),
        (None, "got null"),
        ([1], "got a list"),
        (-1, "cannot be negative"),
        ("-1s", "cannot be negative"),
        ("", "empty string"),
        ("   ", "empty string"),
        ("5d", "unknown duration unit"),
        ("s", "expected a duration"),
        ("1e3", "expected a duration"),
        ("1m30s", "expected a duration"),
        (math.nan, "finite"),
        (math.inf, "finite"),
        (10**400, "too large"),
    ],
)
def test_parse_duration_rejects(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (65536, 65536),
        ("65536", 65536),
        ("10B", 10),
        ("16KiB", 16 * 1024),
        ("1MiB", 1024 * 1024),
        ("2GiB", 2 * 1024**3),
        ("512KB", 512_000),
        ("1MB", 1_000_000),
        ("1GB", 1_000_000_000),
        ("1.5KiB", 1536),
        ("4 kib", 4096),
    ],
)
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (True, "expected a size"),
        (1.0, "expected a size"),
        (-1, "cannot be negative"),
        ("-1KiB", "cannot be negative"),
        ("", "empty string"),
        ("1K", "unknown size unit"),
        ("1XB", "unknown size unit"),
        ("1.5B", "not a whole number of bytes"),
        ("KiB", "expected a size"),
    ],
)
def test_parse_size_rejects(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_size(value)


def test_duration_and_size_fields_are_parsed_in_place() -> None:
    config = config_from_mapping(
        {
            "server": {"keepalive_timeout": "2m", "max_body_bytes": "2MiB"},
            "upstream": {"connect_timeout": "250ms", "max_line_bytes": "64KiB"},
        }
    )
    assert (config.server.keepalive_timeout, config.server.max_body_bytes) == (120.0, 2 << 20)
    assert (config.upstream.connect_timeout, config.upstream.max_line_bytes) == (0.25, 65536)


# --- the schema stays consistent ------------------------------------------------------------


def _keys_with_items() -> dict[str, Any]:
    """Every dotted key with its annotation, the keys of list items (``nodes.url``) too."""
    out: dict[str, Any] = {}
    for key in config_keys():
        hint = _field_hint(key)
        out[key] = hint
        args = typing.get_args(hint)
        item = args[0] if args else None
        if typing.get_origin(hint) is tuple and dataclasses.is_dataclass(item):
            for inner in config_keys(typing.cast(type, item), key):
                *sections, name = inner[len(key) + 1 :].split(".")
                section: Any = item
                for part in sections:
                    section = typing.get_type_hints(section)[part]
                out[inner] = typing.get_type_hints(section)[name]
    return out


def test_every_rule_names_a_real_key() -> None:
    assert set(RULES) <= set(_keys_with_items())


def test_config_keys_walks_every_section() -> None:
    keys = config_keys()
    assert keys[0] == "server.host"
    assert "gateway.queue_timeout" in keys
    assert "gateway.rate_limit.burst" in keys  # Sections nest.
    assert "gateway.rate_limit" not in keys  # A nested section is not itself a leaf.
    assert len(keys) == _count_leaves(Config())


def _count_leaves(section: Any) -> int:
    values = [getattr(section, f.name) for f in dataclasses.fields(section)]
    return sum(_count_leaves(v) if dataclasses.is_dataclass(v) else 1 for v in values)


def _lookup(data: Any, key: str) -> Any:
    for name in key.split("."):
        assert name in data, f"{key} is missing from {EXAMPLE.name}"
        data = data[name]
    return data


def test_example_file_loads_and_documents_every_key() -> None:
    config = load_config(str(EXAMPLE), env={})
    # "A key left out takes the value shown here": every value shown is the default.
    default = Config()
    differ = [key for key in config_keys() if _value_at(config, key) != _value_at(default, key)]
    assert differ == [], f"{EXAMPLE.name} shows non-default values for {differ}"
    assert config == default
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    for key in config_keys():
        _lookup(data, key)


def _value_at(config: object, key: str) -> object:
    for name in key.split("."):
        config = getattr(config, name)
    return config


def test_example_file_comments_every_key() -> None:
    previous = ""
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        if re.match(r"\s+\w+:", line):
            assert previous.lstrip().startswith("#"), f"undocumented: {line.strip()}"
        if line.strip():
            previous = line


def test_example_writes_durations_with_units() -> None:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    for key in config_keys():
        kind = _field(key).metadata.get("kind")
        value = _lookup(data, key)
        if kind == "duration" and value is not None:
            assert re.fullmatch(r"\d+(ms|s|m|h)", value), key


def _field(key: str) -> dataclasses.Field[object]:
    *sections, name = key.split(".")
    section: Any = Config()
    for part in sections:
        section = getattr(section, part)
    return next(f for f in dataclasses.fields(section) if f.name == name)


# --- auth, rate limit and trusted proxies -------------------------------------------------

CANARY = "sk-CANARY-5f0e2b7d9c"


def test_new_defaults() -> None:
    config = Config()
    assert config.auth == AuthConfig(api_keys=(), api_keys_file=None)
    assert config.gateway.rate_limit == RateLimitConfig(requests_per_second=0.0, burst=10)
    assert config.server.trusted_proxies == ("127.0.0.1", "::1")


def test_new_keys_load_from_yaml(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""\
server: {{trusted_proxies: ["10.0.0.0/8", "fd00::/8", "192.0.2.7"]}}
gateway:
  rate_limit: {{requests_per_second: 2.5, burst: 20}}
auth:
  api_keys: ["{CANARY}", "second-key"]
  api_keys_file: /etc/clawproxy/keys
""",
    )
    config = load_config(path, env={})
    assert config.server.trusted_proxies == ("10.0.0.0/8", "fd00::/8", "192.0.2.7")
    assert config.gateway.rate_limit == RateLimitConfig(requests_per_second=2.5, burst=20)
    assert isinstance(config.gateway.rate_limit.requests_per_second, float)
    assert config.auth.api_keys == (CANARY, "second-key")
    assert config.auth.api_keys_file == "/etc/clawproxy/keys"


def test_nested_section_overrides_and_nulls() -> None:
    config = config_from_mapping(
        {"gateway": {"rate_limit": {"burst": 3}}},
        overrides={"gateway.rate_limit.requests_per_second": 1, "server.trusted_proxies": []},
    )
    assert config.gateway.rate_limit == RateLimitConfig(requests_per_second=1.0, burst=3)
    assert config.server.trusted_proxies == ()
    assert config_from_mapping({"gateway": {"rate_limit": None}}) == Config()
    with pytest.raises(ConfigError) as info:
        config_from_mapping({}, overrides={"gateway.rate_limit.brust": 1})
    assert "did you mean 'gateway.rate_limit.burst'" in str(info.value)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"gateway": {"rate_limit": {"requests_per_second": -1}}},
            "gateway.rate_limit.requests_per_second: expected a number >= 0 (0 = off), got -1",
        ),
        (
            {"gateway": {"rate_limit": {"requests_per_second": "fast"}}},
            "gateway.rate_limit.requests_per_second: expected a number >= 0",
        ),
        (
            {"gateway": {"rate_limit": {"burst": 0}}},
            "gateway.rate_limit.burst: expected an integer >= 1, got 0",
        ),
        ({"gateway": {"rate_limit": {"burst": True}}}, "gateway.rate_limit.burst: expected an"),
        ({"gateway": {"rate_limit": 5}}, "gateway.rate_limit: expected a mapping of keys, got 5"),
        (
            {"server": {"trusted_proxies": ["127.0.0.1", "nope"]}},
            "server.trusted_proxies[1]: expected an IP address or CIDR network such as "
            "'10.0.0.0/8', got 'nope'",
        ),
        (
            {"server": {"trusted_proxies": ["10.0.0.1/8"]}},
            "server.trusted_proxies[0]: expected an IP address or CIDR network such as "
            "'10.0.0.0/8', got '10.0.0.1/8' (host bits are set; the network is 10.0.0.0/8)",
        ),
        (
            {"server": {"trusted_proxies": [None]}},
            "server.trusted_proxies[0]: expected an IP address or CIDR network",
        ),
        ({"server": {"trusted_proxies": "127.0.0.1"}}, "server.trusted_proxies: expected a list"),
        ({"auth": {"api_keys_file": ""}}, "auth.api_keys_file: expected null or a non-empty path"),
        ({"auth": {"api_key": []}}, "unknown key 'auth.api_key' (did you mean 'auth.api_keys'?)"),
    ],
)
def test_new_key_errors(data: object, expected: str) -> None:
    assert error_of(data).startswith(expected)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"auth": {"api_keys": ["good-key", f"{CANARY} trailing"]}},
            "auth.api_keys[1]: expected a non-empty string of printable ASCII without "
            "whitespace, at most 1024 characters, got a string (not shown: it may be a key) "
            "(the key has whitespace, control or non-ASCII characters)",
        ),
        ({"auth": {"api_keys": [""]}}, "auth.api_keys[0]: expected a non-empty string"),
        ({"auth": {"api_keys": [CANARY + "\u00e9"]}}, "auth.api_keys[0]: expected a non-empty"),
        ({"auth": {"api_keys": [CANARY + "\t"]}}, "auth.api_keys[0]: expected a non-empty"),
        ({"auth": {"api_keys": [CANARY + "x" * 1024]}}, "auth.api_keys[0]: expected a non-empty"),
        (
            {"auth": {"api_keys": [CANARY, "other", CANARY]}},
            "auth.api_keys: expected a list of distinct keys, got a list "
            "(entries [0] and [2] are the same key)",
        ),
        (
            {"auth": {"api_keys": [4242424242]}},
            "auth.api_keys[0]: expected a non-empty string of printable ASCII without "
            "whitespace, at most 1024 characters, got a number (not shown: it may be a key)",
        ),
        (
            {"auth": {"api_keys": CANARY}},
            "auth.api_keys: expected a list of distinct keys, got a string (not shown",
        ),
        ({"auth": CANARY}, "auth: expected a mapping of keys, got a string (not shown"),
        ({"auth": {CANARY: 1}}, "unknown key under 'auth' (name not shown: it may be a key; "),
        ({"auth": {"api_keys": [{"key": CANARY}]}}, "auth.api_keys[0]: expected a non-empty"),
    ],
)
def test_auth_errors_never_show_a_key(data: object, expected: str) -> None:
    message = error_of(data)
    assert message.startswith(expected)
    assert "CANARY" not in message
    assert "4242" not in message


def test_auth_errors_from_files_and_overrides_never_show_a_key(tmp_path: Path) -> None:
    path = write(tmp_path, f'auth:\n  api_keys: ["{CANARY} x"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value).startswith(f"{path}: auth.api_keys[0]: expected a non-empty")
    assert info.value.key == "auth.api_keys[0]"
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides={"auth.api_keys": [CANARY, CANARY]}, env={})
    assert info.value.from_override
    assert "CANARY" not in str(info.value)


@pytest.mark.parametrize("key", ["!", "~" * 1024, "sk-" + "a1" * 40, 'a"b#c\\d'])
def test_check_api_key_accepts_printable_ascii(key: str) -> None:
    check_api_key(key)
    assert config_from_mapping({"auth": {"api_keys": [key]}}).auth.api_keys == (key,)


@pytest.mark.parametrize("label", ["alice", "bot-1", "ci.runner_2", "a@b+c", "x" * 64])
def test_check_key_label(label: str) -> None:
    check_key_label(label)
    for bad in (label + " ", label + "\x1b", "", "x" * 65, label + "/"):
        with pytest.raises(ValueError, match="a label is 1 to 64 of"):
            check_key_label(bad)


def test_every_item_rule_names_a_list_key() -> None:
    keys = _keys_with_items()
    for key in ITEM_RULES:
        assert key in keys
        _, hint = _split_optional(keys[key])
        assert typing.get_origin(hint) in (list, tuple), key
    assert {"auth", "auth.api_keys"} <= SECRET_KEYS


def _split_optional(hint: Any) -> tuple[bool, Any]:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if type(None) in typing.get_args(hint) and len(args) == 1:
        return True, args[0]
    return False, hint


def _field_hint(key: str) -> Any:
    *sections, name = key.split(".")
    section: Any = Config()
    for part in sections:
        section = getattr(section, part)
    return typing.get_type_hints(type(section))[name]


# --- operations: admin token, hot load, GPU telemetry, alerts ------------------------------


def test_operations_defaults() -> None:
    config = Config()
    assert config.gateway.admin_token is None
    assert (config.gateway.model_keep_alive, config.gateway.model_load_timeout) == (300.0, 300.0)
    assert (config.gpu.enabled, config.gpu.interval) == (True, 5.0)
    assert config.alerts.gpu_memory_percent == 95.0
    assert config.alerts.hysteresis_percent == 5.0
    assert config.alerts.webhook_url is None


def test_operations_values_load() -> None:
    config = config_from_mapping(
        {
            "gateway": {"admin_token": "tok-1", "model_keep_alive": None},
            "gpu": {"enabled": False, "interval": "250ms"},
            "alerts": {
                "gpu_memory_percent": None,
                "webhook_url": "http://[::1]:9000/hook?channel=ops",
                "webhook_timeout": "1s",
            },
        }
    )
    assert config.gateway.model_keep_alive is None  # keep loaded until unloaded
    assert (config.gpu.enabled, config.gpu.interval) == (False, 0.25)
    assert config.alerts.gpu_memory_percent is None
    assert config.alerts.webhook_timeout == 1.0


@pytest.mark.parametrize(
    ("data", "start"),
    [
        ({"gpu": {"interval": "5ms"}}, "gpu.interval: expected a duration of at least 10ms"),
        ({"gpu": {"enabled": "yes"}}, "gpu.enabled: expected"),
        ({"alerts": {"gpu_memory_percent": 0}}, "alerts.gpu_memory_percent: expected null (off)"),
        ({"alerts": {"gpu_memory_percent": 101}}, "alerts.gpu_memory_percent: expected"),
        ({"alerts": {"hysteresis_percent": 60}}, "alerts.hysteresis_percent: expected"),
        ({"alerts": {"webhook_url": "ftp://x/"}}, "alerts.webhook_url: expected null or an"),
        ({"alerts": {"webhook_url": "http://u:p@x/"}}, "alerts.webhook_url: expected"),
        ({"gateway": {"model_keep_alive": 0}}, "gateway.model_keep_alive: expected null (keep"),
        ({"gateway": {"model_load_timeout": 0}}, "gateway.model_load_timeout: expected"),
    ],
)
def test_operations_errors(data: dict[str, Any], start: str) -> None:
    assert error_of(data).startswith(start)


def test_admin_token_is_a_secret() -> None:
    assert "gateway.admin_token" in SECRET_KEYS
    for bad in ("has space CANARY", "CANARY\u00e9", ""):
        message = error_of({"gateway": {"admin_token": bad}})
        assert message.startswith("gateway.admin_token: expected")
        assert "CANARY" not in message


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://hooks.local/a/b?x=1", ("hooks.local", 80, "/a/b?x=1")),
        ("http://127.0.0.1:8125", ("127.0.0.1", 8125, "/")),
        ("http://[::1]:9?q", ("::1", 9, "/?q")),
    ],
)
def test_parse_http_url(url: str, expected: tuple[str, int, str]) -> None:
    assert parse_http_url(url) == expected


@pytest.mark.parametrize(
    "url", ["https://x/", "ftp://x/", "http://a@x/", "http://x/#f", "http://x/a b", "http:///p"]
)
def test_parse_http_url_refuses(url: str) -> None:
    with pytest.raises(ValueError):
        parse_http_url(url)
