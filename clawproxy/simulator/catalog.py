"""The installed models and which of them are loaded, rendered as Ollama renders them.

Theory of operation: ``ModelRegistry`` owns two pieces of state, the catalog (fixed at
start) and the loaded set (name -> expiry in Unix nanoseconds). A generation or a load
request loads its model for ``keep_alive``; ``keep_alive: 0`` unloads it; ``/api/ps`` drops
expired entries lazily when it is asked. Names resolve the way Ollama resolves them: case
does not matter and a missing tag means ``latest``. Payload builders return dicts in Go
struct field order, ready for ``go_dumps``.

A node can be given a catalog by name (``installed_models``): a name of ``DEFAULT_MODELS``
takes that entry, any other name gets a plausible chat model derived from the name, so a
test can invent a model that only one node of a pool has.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .gojson import go_time

__all__ = [
    "DEFAULT_KEEP_ALIVE_NS",
    "DEFAULT_MODELS",
    "KEEP_FOREVER_NS",
    "ModelInfo",
    "ModelRegistry",
    "installed_models",
    "invented_model",
    "normalize_name",
    "parse_keep_alive",
]

NANOS_PER_SECOND = 1_000_000_000
# Ollama's default keep_alive (OLLAMA_KEEP_ALIVE unset).
DEFAULT_KEEP_ALIVE_NS = 5 * 60 * NANOS_PER_SECOND
# A negative keep_alive becomes math.MaxInt64 nanoseconds (~292 years) in api.Duration.
KEEP_FOREVER_NS = 2**63 - 1
_DEFAULT_CONTEXT_LENGTH = 4096  # what a runner gets without num_ctx (FAQ)
_DEFAULT_TAG = "latest"
# Invented models: 1 to 14 billion parameters, stored at Q4_K_M's ~4.8 bits (0.6 bytes)
# per parameter, with the 32 Ki-token context common to current chat models.
_INVENTED_MAX_BILLIONS = 14
_Q4_K_M_BYTES_PER_PARAMETER = 0.6
_INVENTED_CONTEXT_LENGTH = 32_768


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One installed model, as ``/api/tags`` and ``/api/show`` describe it."""

    name: str
    family: str
    parameter_size: str
    quantization_level: str
    size: int
    parameter_count: int
    context_length: int
    capabilities: tuple[str, ...] = ("completion", "tools")
    modified_at: str = "2026-08-01T12:00:00.123456789Z"
    format: str = "gguf"

    @property
    def digest(self) -> str:
        """A stable sha256-shaped digest (made up; real ones hash the manifest)."""
        return hashlib.sha256(f"clawproxy-simulator/{self.name}".encode()).hexdigest()

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": self.format,
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }


DEFAULT_MODELS: tuple[ModelInfo, ...] = (
    ModelInfo(
        name="qwen3:32b",
        family="qwen3",
        parameter_size="32.8B",
        quantization_level="Q4_K_M",
        size=20_201_253_588,
        parameter_count=32_762_123_264,
        context_length=40_960,
        capabilities=("completion", "tools", "thinking"),
    ),
    ModelInfo(
        name="llama3.2:latest",
        family="llama",
        parameter_size="3.2B",
        quantization_level="Q4_K_M",
        size=2_019_393_189,
        parameter_count=3_212_749_888,
        context_length=131_072,
        modified_at="2026-07-14T09:30:12.5Z",
    ),
    ModelInfo(
        name="gemma3:4b",
        family="gemma3",
        parameter_size="4.3B",
        quantization_level="Q4_K_M",
        size=3_338_801_804,
        parameter_count=4_300_079_472,
        context_length=131_072,
        capabilities=("completion", "vision"),
        modified_at="2026-06-02T18:04:51.000731Z",
    ),
)


def normalize_name(name: str) -> str:
    """``"Qwen3"`` -> ``"qwen3:latest"``; the tag belongs to the last path segment."""
    name = name.strip().lower()
    last = name.rsplit("/", 1)[-1]
    if last and ":" not in last:
        name += ":" + _DEFAULT_TAG
    return name


def invented_model(name: str) -> ModelInfo:
    """A plausible chat model called ``name`` (``:latest`` added when it has no tag).

    Sizes derive from a hash of the name, so the same name always gives the same entry.
    """
    name = name.strip()
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        name += ":" + _DEFAULT_TAG
    seed = int.from_bytes(hashlib.sha256(name.lower().encode()).digest()[:8], "big")
    parameter_count = (1 + seed % _INVENTED_MAX_BILLIONS) * 1_000_000_000 + seed % 999_999_937
    family = re.sub(r"[^a-z0-9]", "", name.rsplit("/", 1)[-1].split(":", 1)[0].lower())
    return ModelInfo(
        name=name,
        family=family or "llama",
        parameter_size=f"{parameter_count / 1e9:.1f}B",
        quantization_level="Q4_K_M",
        size=int(parameter_count * _Q4_K_M_BYTES_PER_PARAMETER),
        parameter_count=parameter_count,
        context_length=_INVENTED_CONTEXT_LENGTH,
    )


def installed_models(models: Sequence[str | ModelInfo]) -> tuple[ModelInfo, ...]:
    """The catalog for ``models``: entries kept, names resolved (see the module doc).

    Names resolve like requests do (case and a missing ``:latest`` do not matter); a model
    named twice is installed once, where it first appears.
    """
    known = {normalize_name(model.name): model for model in DEFAULT_MODELS}
    catalog: dict[str, ModelInfo] = {}
    for item in models:
        if isinstance(item, str):
            if not item.strip():
                raise ValueError("a model name must not be empty")
            model = known.get(normalize_name(item)) or invented_model(item)
        else:
            model = item
        catalog.setdefault(normalize_name(model.name), model)
    return tuple(catalog.values())


_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": NANOS_PER_SECOND,
    "m": 60 * NANOS_PER_SECOND,
    "h": 3600 * NANOS_PER_SECOND,
}


def _parse_go_duration(text: str) -> int:
    body = text
    sign = 1
    if body[:1] in ("+", "-"):
        sign = -1 if body[0] == "-" else 1
        body = body[1:]
    if body == "0":
        return 0
    if not body:
        raise ValueError(f'time: invalid duration "{text}"')
    total = 0
    position = 0
    while position < len(body):
        match = _DURATION_PART.match(body, position)
        if match is None:
            if re.fullmatch(r"[\d.]+", body[position:]):
                raise ValueError(f'time: missing unit in duration "{text}"')
            raise ValueError(f'time: invalid duration "{text}"')
        total += round(float(match.group(1)) * _UNIT_NS[match.group(2)])
        position = match.end()
    return sign * total


def parse_keep_alive(value: Any) -> int:
    """Ollama's ``keep_alive`` in nanoseconds: seconds as a number or a Go duration string.

    Negative means forever. Raises ``ValueError`` with Go's message for bad input.
    """
    if value is None:
        return DEFAULT_KEEP_ALIVE_NS
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"Unsupported type: '{type(value).__name__}'")
    if isinstance(value, str):
        nanos = _parse_go_duration(value)
    else:
        nanos = int(value * NANOS_PER_SECOND) if value >= 0 else -1
    return KEEP_FOREVER_NS if nanos < 0 else nanos


class ModelRegistry:
    """The catalog plus the loaded set; the only owner of "what is loaded"."""

    def __init__(self, models: tuple[ModelInfo, ...] | list[ModelInfo]) -> None:
        self.models: tuple[ModelInfo, ...] = tuple(models)
        self._by_name = {normalize_name(model.name): model for model in self.models}
        # name -> (expires_at unix ns, context length)
        self._loaded: dict[str, tuple[int, int]] = {}

    def lookup(self, name: str) -> ModelInfo | None:
        """The installed model for a request's ``model`` field, or ``None``."""
        return self._by_name.get(normalize_name(name))

    def load(self, model: ModelInfo, keep_alive_ns: int, context_length: int | None) -> None:
        """Mark loaded until now + keep_alive (``0`` unloads, as Ollama's expiry does)."""
        if keep_alive_ns == 0:
            self._loaded.pop(model.name, None)
            return
        now = time.time_ns()
        expires = now + keep_alive_ns if keep_alive_ns < KEEP_FOREVER_NS - now else KEEP_FOREVER_NS
        self._loaded[model.name] = (expires, context_length or _DEFAULT_CONTEXT_LENGTH)

    def unload(self, model: ModelInfo) -> None:
        self._loaded.pop(model.name, None)

    def loaded_names(self) -> list[str]:
        """Names of loaded models, longest time left first (what ``/api/ps`` lists)."""
        now = time.time_ns()
        for name in [name for name, (expires, _) in self._loaded.items() if expires <= now]:
            del self._loaded[name]
        return sorted(self._loaded, key=lambda name: -self._loaded[name][0])

    def tags_payload(self) -> dict[str, Any]:
        return {
            "models": [
                {
                    "name": model.name,
                    "model": model.name,
                    "modified_at": model.modified_at,
                    "size": model.size,
                    "digest": model.digest,
                    "details": model.details(),
                }
                for model in self.models
            ]
        }

    def ps_payload(self) -> dict[str, Any]:
        entries = []
        for name in self.loaded_names():
            model = self._by_name[normalize_name(name)]
            expires, context_length = self._loaded[name]
            entries.append(
                {
                    "name": model.name,
                    "model": model.name,
                    "size": model.size,
                    "digest": model.digest,
                    "details": model.details(),
                    "expires_at": go_time(expires),
                    "size_vram": model.size,
                    "context_length": context_length,
                }
            )
        return {"models": entries}

    def show_payload(self, model: ModelInfo) -> dict[str, Any]:
        arch = model.family
        # model_info is a Go map: keys come out sorted.
        model_info = dict(
            sorted(
                {
                    "general.architecture": arch,
                    "general.file_type": 15,
                    "general.parameter_count": model.parameter_count,
                    "general.quantization_version": 2,
                    f"{arch}.context_length": model.context_length,
                    f"{arch}.block_count": 64,
                    f"{arch}.embedding_length": 5120,
                    "tokenizer.ggml.model": "gpt2",
                    "tokenizer.ggml.tokens": [],
                }.items()
            )
        )
        return {
            "modelfile": (
                "# Modelfile of the clawproxy simulator (no weights behind it)\n"
                f"FROM {model.name}\n"
                'TEMPLATE """{{ .Prompt }}"""\n'
            ),
            "parameters": 'stop                           "<|im_end|>"',
            "template": "{{ .Prompt }}",
            "details": model.details(),
            "model_info": model_info,
            "capabilities": list(model.capabilities),
            "modified_at": model.modified_at,
        }
