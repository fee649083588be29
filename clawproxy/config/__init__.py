"""The configuration layer: the schema (typed sections with defaults), the rules, the loader.

Import order, bottom first: ``errors`` (ConfigError), ``schema`` (the dataclasses),
``rules`` (what each key accepts), ``loading`` (coercion, overrides, the file);
``yamlfile`` (PyYAML) is imported by ``load_config`` only when there is a file to read.
"""

from clawproxy.config.errors import ConfigError
from clawproxy.config.loading import CONFIG_ENV_VAR, config_from_mapping, config_keys, load_config
from clawproxy.config.rules import (
    ITEM_RULES,
    MAX_API_KEY_BYTES,
    RULES,
    SECRET_KEYS,
    Rule,
    check_api_key,
    check_key_label,
)
from clawproxy.config.schema import (
    DURATION,
    SIZE,
    AlertEventsConfig,
    AlertsConfig,
    AuthConfig,
    Config,
    CoordinationConfig,
    GatewayConfig,
    GpuConfig,
    LoggingConfig,
    ModelConfig,
    NodeConfig,
    NodeTlsConfig,
    OpenAIConfig,
    RateLimitConfig,
    RoutingConfig,
    ServerConfig,
    UiConfig,
    UpstreamConfig,
    WebhookConfig,
    queue_timeout_s,
)

__all__ = [
    "CONFIG_ENV_VAR",
    "DURATION",
    "ITEM_RULES",
    "MAX_API_KEY_BYTES",
    "RULES",
    "SECRET_KEYS",
    "SIZE",
    "AlertEventsConfig",
    "AlertsConfig",
    "AuthConfig",
    "Config",
    "ConfigError",
    "CoordinationConfig",
    "GatewayConfig",
    "GpuConfig",
    "LoggingConfig",
    "ModelConfig",
    "NodeConfig",
    "NodeTlsConfig",
    "OpenAIConfig",
    "RateLimitConfig",
    "RoutingConfig",
    "Rule",
    "ServerConfig",
    "UiConfig",
    "UpstreamConfig",
    "WebhookConfig",
    "check_api_key",
    "check_key_label",
    "config_from_mapping",
    "config_keys",
    "load_config",
    "queue_timeout_s",
]
