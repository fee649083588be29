"""Exceptions that carry an HTTP status and render an OpenAI-style error body.

Theory of operation: every failure a client can see is one of these. Code deep in the
gateway raises the narrowest class that fits; the HTTP layer catches ``GatewayError`` at one
place and renders ``error_body()``. Foreign exceptions (h11, OSError, orjson) are mapped to
these at the module boundary where they occur, never passed through.

The body shape is what the official ``openai`` client parses:
``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}``.

Retries: the official clients (Python and Node) retry 408, 409, 429 and every 5xx twice
by default, unless the response says ``x-should-retry: false``. An error that will fail
the same way again (a bad request, an unknown model, a body too large, an Ollama that
refuses connections or rejects the request) says so, so a client does not hit a failing
Ollama three times; the ones worth retrying (``RETRYABLE_STATUSES``: a full queue, a
rate limit, a timeout) do not, and 503/429 carry ``Retry-After``.
"""

from __future__ import annotations

import orjson

# Statuses a retry may fix: the client's wait, our queue, its rate or Ollama's speed.
RETRYABLE_STATUSES = frozenset({408, 409, 429, 503, 504})
NO_RETRY_HEADER = (b"x-should-retry", b"false")


def retry_headers(status: int) -> tuple[tuple[bytes, bytes], ...]:
    """``x-should-retry: false`` for an error status no retry can fix; else nothing."""
    return () if status < 400 or status in RETRYABLE_STATUSES else (NO_RETRY_HEADER,)


def error_body(
    message: str, err_type: str, param: str | None = None, code: str | None = None
) -> bytes:
    """Render the OpenAI error object as JSON bytes."""
    return orjson.dumps(
        {"error": {"message": message, "type": err_type, "param": param, "code": code}}
    )


class GatewayError(Exception):
    """Base class: a failure with an HTTP status and an OpenAI error type."""

    status: int = 500
    err_type: str = "api_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        if status is not None:
            self.status = status
        # Extra response headers such as Retry-After or WWW-Authenticate.
        self.headers = headers

    def body(self) -> bytes:
        return error_body(self.message, self.err_type, self.param, self.code)

    def response_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """The extra headers of this error's response, the retry advice included."""
        return self.headers + retry_headers(self.status)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r}, {self.message!r})"


class InvalidRequest(GatewayError):
    """The client sent something we cannot or will not forward (400)."""

    status = 400
    err_type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status = 401
    err_type = "authentication_error"
    default_code = "invalid_api_key"


class Forbidden(GatewayError):
    """A cross-origin request to the admin port (403)."""

    status = 403
    err_type = "permission_error"
    default_code = "forbidden"


class NotFound(GatewayError):
    status = 404
    err_type = "not_found_error"


class MethodNotAllowed(GatewayError):
    status = 405
    err_type = "invalid_request_error"
    default_code = "method_not_allowed"


class MisdirectedRequest(GatewayError):
    """A Host the admin port does not answer to: DNS rebinding protection (421)."""

    status = 421
    err_type = "invalid_request_error"
    default_code = "host_not_allowed"


class RateLimited(GatewayError):
    status = 429
    err_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class Overloaded(GatewayError):
    """Admission refused: every slot and queue place is taken, or the wait ran out (503)."""

    status = 503
    err_type = "overloaded_error"
    default_code = "server_overloaded"


# Seconds a refused client should wait before retrying. A queue that is full now drains in
# about one generation; one second keeps polite clients from hammering without stalling them.
RETRY_AFTER_SECONDS = 1


def overloaded(message: str, code: str) -> Overloaded:
    """A 503 worth retrying, with ``Retry-After`` (a full queue, a busy Ollama, a drain)."""
    return Overloaded(
        message, code=code, headers=((b"retry-after", str(RETRY_AFTER_SECONDS).encode()),)
    )


class UpstreamUnavailable(GatewayError):
    """Ollama refused the connection, reset it, or sent something unusable (502)."""

    status = 502
    err_type = "api_error"
    default_code = "upstream_unavailable"


class UpstreamTimeout(GatewayError):
    """Ollama did not answer, or went silent, within ``server.timeout`` (504)."""

    status = 504
    err_type = "api_error"
    default_code = "upstream_timeout"


class ConnectTimeout(UpstreamTimeout):
    """Ollama did not accept the connection in time: nothing was sent, so another node may
    take the request (``upstream.connect_timeout``)."""


class UpstreamFailed(GatewayError):
    """Ollama answered with an error of its own; the status is chosen by the mapper."""

    status = 502
    err_type = "api_error"
    default_code = "upstream_error"


# Failures of Ollama itself (refused, silent, or an error of its own), as opposed to a
# client's mistake that Ollama merely confirmed (an unknown model, a rejected field).
UPSTREAM_ERRORS = (UpstreamUnavailable, UpstreamTimeout, UpstreamFailed)
