"""A built-in Ollama simulator for demos, tests and benchmarks.

It speaks Ollama's native API (``/api/chat``, ``/api/generate``, ``/api/tags``,
``/api/show``, ``/api/ps``, ``/api/version``) with the bytes Ollama 0.33's Go server would
send: Go JSON escaping, one HTTP chunk per NDJSON line, net/http-style heads. Replies come
from a script, pacing from ``token_rate``, and misbehaviour from ``Fault`` (see
RELIABILITY.md Appendix A). Everything it receives and does is recorded for assertions.

    async with OllamaSimulator(token_rate=None) as sim:
        sim.next_reply(Reply.from_text("Hello there", fault=Fault(stall_after=1)))
        ...  # point a client at sim.endpoint
        assert sim.streams[0].outcome == "client_closed"
"""

from .catalog import DEFAULT_MODELS, ModelInfo
from .gojson import go_dumps, go_string, go_time
from .records import OUTCOMES, RecordedRequest, StreamRecord
from .script import Fault, Reply, Script, demo_script, numbered_script, split_words, tool_call
from .server import OLLAMA_VERSION, OllamaSimulator

__all__ = [
    "DEFAULT_MODELS",
    "OLLAMA_VERSION",
    "OUTCOMES",
    "Fault",
    "ModelInfo",
    "OllamaSimulator",
    "RecordedRequest",
    "Reply",
    "Script",
    "StreamRecord",
    "demo_script",
    "go_dumps",
    "go_string",
    "go_time",
    "numbered_script",
    "split_words",
    "tool_call",
]
