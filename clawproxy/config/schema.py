"""The gateway's configuration schema: typed sections with a default for every key.

The YAML layout of the original design is the contract (sections ``server``, ``model``,
``gateway``, ``logging``); new keys extend it (``upstream``, ``auth``, and sections nested in
sections, such as ``gateway.rate_limit``). Durations are stored as float seconds, sizes
as int bytes.

Theory of operation: the frozen dataclasses below *are* the schema. The loader
(``config.loading``) walks them with ``dataclasses.fields`` and ``typing.get_type_hints``, so
adding a section means adding a dataclass and a field on ``Config``, plus any rules in
``config.rules.RULES``; the loader itself does not change. A field's annotation says how its
value is coerced (``str``, ``int``, ``float``, ``bool``, ``X | None``, ``list[X]``,
``tuple[X, ...]``, a nested section); its metadata kind says when the value is written with a
unit instead (``DURATION``: ``"30s"`` -> 30.0; ``SIZE``: ``"1MiB"`` -> 1048576).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from clawproxy.units import KIB, MIB

# Field metadata markers: the loader parses these fields with parse_duration / parse_size.
DURATION: Final = {"kind": "duration"}
SIZE: Final = {"kind": "size"}


@dataclass(frozen=True, slots=True)
class CorsConfig:
    # Origins ("https://app.example[:port]") whose pages may call /v1 and the UI's data from
    # a browser; empty: none, only the gateway's own pages. "*" means any, and is honoured
    # only while API keys are on (policy.crosssite).
    allow_origins: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    # Bounds the wait for Ollama's first byte and any silence between its chunks.
    timeout: float = field(default=30.0, metadata=DURATION)
    max_body_bytes: int = field(default=1 * MIB, metadata=SIZE)
    # Inputs in one /v1/embeddings request: OpenAI's own limit (2048), so no client built
    # for OpenAI is refused; the body limit bounds their total size.
    max_embedding_inputs: int = 2048
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
    # Host names the public port answers to (DNS rebinding); empty: any.
    allowed_hosts: tuple[str, ...] = ()
    cors: CorsConfig = field(default_factory=CorsConfig)


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
    # The admin port's own connection budget, apart from server.max_connections: a public
    # flood never takes it, an admin flood never takes the public one. Its clients are an
    # operator, a scraper or two and a health check; 16 fits them with room to spare.
    admin_max_connections: int = 16
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
    # Send X-Clawproxy-Node (the node's name) with each reply; off: it shows the topology.
    expose_node_header: bool = False


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
class WebhookConfig:
    """One receiver of alerts (``alerts.webhooks``); see ``clawproxy.telemetry.alerts``."""

    # http:// or https://; chat robots carry their token in it, so it is never logged.
    url: str = ""
    # generic (clawproxy's JSON), wecom, dingtalk, feishu or slack.
    format: str = "generic"
    # The robot's signing secret (dingtalk, feishu); None: unsigned.
    secret: str | None = None
    # The events it receives (names as in alerts.events); empty: all of them.
    events: tuple[str, ...] = ()
    # PEM bundle of the CA(s) for an https:// receiver; None: the system's CAs.
    ca_file: str | None = None


@dataclass(frozen=True, slots=True)
class AlertEventsConfig:
    """Which alerts are raised at all (each one logged, counted and sent)."""

    gpu_memory: bool = True
    # "GPU memory back to normal", when a GPU's alert re-arms.
    gpu_memory_resolved: bool = True
    node_ejected: bool = True
    node_back: bool = True
    # A node's ejection left a model with no healthy node that serves it.
    model_down: bool = True
    queue_full: bool = True
    upstream_errors: bool = True


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    # Alert when a GPU's memory use reaches this percentage; None turns the alert off.
    gpu_memory_percent: float | None = 95.0
    # Or when it reaches this many bytes ("76GiB"), on every GPU; replaces the percentage.
    gpu_memory_used: int | None = field(default=None, metadata=SIZE)
    # Re-arm only once use falls this many points (percent of the GPU's memory, for either
    # threshold) below the threshold: no flood at the line.
    hysteresis_percent: float = 5.0
    # One generic webhook, kept from earlier releases: the same as an alerts.webhooks entry.
    webhook_url: str | None = None
    # One delivery attempt, whole and its connect (TCP and TLS handshakes) alone.
    webhook_timeout: float = field(default=3.0, metadata=DURATION)
    webhook_connect_timeout: float = field(default=2.0, metadata=DURATION)
    # A failed delivery (no connection, a timeout, a 5xx) is tried again this many times,
    # first after webhook_retry_delay, then twice as long each time.
    webhook_retries: int = 2
    webhook_retry_delay: float = field(default=1.0, metadata=DURATION)
    webhooks: tuple[WebhookConfig, ...] = ()
    events: AlertEventsConfig = field(default_factory=AlertEventsConfig)
    # At most one message per event and node this often (node, queue and error alerts;
    # a GPU's own alert has its hysteresis instead).
    min_interval: float = field(default=300.0, metadata=DURATION)
    # Alert when more requests than this were refused for a full queue (503) in a minute.
    queue_full_per_minute: int = 10
    # Alert when more than this many Ollama errors happened in a minute.
    upstream_errors_per_minute: int = 10


@dataclass(frozen=True, slots=True)
class UiConfig:
    # The built-in web UI on the public port (/ui, /ui/chat, /ui/internals, /ui/api/stats);
    # false removes those routes, so they answer 404 like any unknown path.
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class NodeTlsConfig:
    # PEM bundle of the CA(s) that signed the node's certificate; None: the system's CAs.
    ca_file: str | None = None
    # A client certificate (and its key, if not in the same file) for nodes that ask for one.
    cert_file: str | None = None
    key_file: str | None = None
    # false accepts any certificate: for a lab only, it gives up what https is for.
    verify: bool = True


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """One Ollama server behind the gateway (``nodes:``); see ``clawproxy.nodes``."""

    # Unique; names the node in logs, metrics, the admin API and X-Clawproxy-Node.
    name: str = ""
    url: str = ""
    # The most generations this gateway sends it at once (its OLLAMA_NUM_PARALLEL);
    # None: gateway.max_concurrent.
    max_concurrent: int | None = None
    # Share of the load relative to the other nodes of its tier.
    weight: float = 1.0
    # Higher tiers are used first; a lower one only when no higher node can take a request.
    priority: int = 0
    # Models it may serve; None: whatever its /api/tags lists.
    models: tuple[str, ...] | None = None
    enabled: bool = True
    tls: NodeTlsConfig = field(default_factory=NodeTlsConfig)
    # The Prometheus page of the node's dcgm-exporter or nvidia_gpu_exporter, for its GPU
    # panel, metrics and alerts (http:// or https://; tls.ca_file applies); None: none.
    gpu_metrics_url: str | None = None


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """How requests are spread over the nodes and how a failing node is set aside."""

    # Nodes one request may be tried on before it fails (failover happens only while
    # nothing has reached the client).
    max_attempts: int = 3
    # Failures in a row (refused, reset, a 5xx before the stream, a timeout) that eject a node.
    eject_after: int = 3
    # The first ejection lasts this long, each one after it twice as long, up to eject_max;
    # then one trial request decides.
    eject_base: float = field(default=5.0, metadata=DURATION)
    eject_max: float = field(default=300.0, metadata=DURATION)
    # After Ollama's own 503 (its queue is full), the node gets no new request this long.
    busy_backoff: float = field(default=1.0, metadata=DURATION)
    # The health probe (/api/version) of each node; /api/tags and /api/ps on discovery_interval.
    probe_interval: float = field(default=5.0, metadata=DURATION)
    discovery_interval: float = field(default=30.0, metadata=DURATION)
    # "off"; "session": requests with the same X-Session-Id go to the same node while its
    # load is within affinity_margin of the least loaded candidate; "prefix": the same, and
    # requests without the header by their conversation's start (model, first 2 messages).
    affinity: str = "off"
    affinity_margin: float = 0.5


@dataclass(frozen=True, slots=True)
class OpenAIConfig:
    """How replies are shaped where OpenAI-compatible clients differ."""

    # The delta/message field that carries the model's reasoning (thinking): the
    # "reasoning_content" most OpenAI-compatible clients read (DeepSeek's name: LangChain,
    # LiteLLM, the AI SDK's openai-compatible provider, Open WebUI), "reasoning" (Ollama's
    # own /v1 and OpenRouter), or "both".
    reasoning_field: str = "reasoning_content"


@dataclass(frozen=True, slots=True)
class CoordinationConfig:
    """Whether several gateway instances share each node's slots and the rate limits."""

    # "local": this process alone (no Redis); "redis": shared through Redis (clawproxy[redis]).
    backend: str = "local"
    # redis://[:password@]host[:port][/db] or rediss:// (TLS); with backend redis.
    url: str | None = None
    # A file holding the Redis password (one line), instead of putting it in the URL.
    password_file: str | None = None
    # Every key this gateway writes starts with it (several gateway fleets on one Redis).
    key_prefix: str = "clawproxy"
    # Longest wait for one Redis call; past it the call counts as failed.
    op_timeout: float = field(default=0.05, metadata=DURATION)
    # A lease nobody renews is reclaimed after this long (a killed or frozen instance).
    lease_ttl: float = field(default=15.0, metadata=DURATION)
    # Redis unreachable: "degrade" (each instance takes its share of every node's slots)
    # or "fail_closed" (503 until it is back).
    on_error: str = "degrade"


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
    # Several Ollama servers; empty: model.endpoint is the one node, named "default".
    nodes: tuple[NodeConfig, ...] = ()
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    coordination: CoordinationConfig = field(default_factory=CoordinationConfig)
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)


def queue_timeout_s(config: Config) -> float:
    """How long a queued request may wait for a slot: ``gateway.queue_timeout`` or its fallback."""
    queued = config.gateway.queue_timeout
    return config.server.timeout if queued is None else queued
