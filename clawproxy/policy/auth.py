"""API keys: who may use the gateway, checked in constant time over bytes.

Theory of operation
-------------------
The store holds the SHA-256 digest of every accepted key and a label for it, never the key
text itself. A request presents ``Authorization: Bearer KEY``; the check works on the raw
header bytes throughout, so a key with non-ASCII bytes is a plain 401, never a
``UnicodeError`` or the ``TypeError`` that ``hmac.compare_digest`` raises for non-ASCII
``str`` (a 500 to the client, RELIABILITY 0.9).

Constant time: the presented key is hashed once (the header is capped first, so nobody
makes us hash megabytes) and its digest is compared with ``hmac.compare_digest`` against
*every* stored digest, with no early exit. Digests have one length whatever the key's, so
the time taken reveals neither which key matched, nor how long any key is, nor how much of
a guess was right.

Labels name a key in logs and rate limits: the operator's name for it from the key file
(``alice sk-...``), else ``key-`` plus the first 8 hex digits of its SHA-256. Keys, even
partly masked, never reach a log line, an error message or a response body; errors say
"missing" or "invalid" and nothing of what was sent.

Keys come from ``auth.api_keys`` (fixed for the process) and ``auth.api_keys_file`` (one key
a line, reread by ``reload()`` on SIGHUP). A reload that fails leaves the old keys in force.
Auth is on when either source is configured, even if the file is empty: an operator who
named a key file wants a locked door, so an empty file refuses everyone rather than
opening the gateway (fail closed).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat
from collections.abc import Iterable
from typing import Final

from clawproxy.config import AuthConfig, ConfigError, check_api_key, check_key_label
from clawproxy.errors import AuthenticationFailed
from clawproxy.units import KIB, MIB

log = logging.getLogger("clawproxy.auth")

AUTHORIZATION_HEADER: Final = b"authorization"
# Far above "Bearer " + the longest key config accepts (1 KiB), far below anything that
# would make hashing a cost; nginx's default header buffer is 1 KiB, large ones 8 KiB.
MAX_AUTHORIZATION_BYTES: Final = 4 * KIB
# About ten thousand keys; every check compares against all of them, so more is a misuse.
MAX_KEY_FILE_BYTES: Final = 1 * MIB
# Sent with every 401, as RFC 6750 3 asks; the OpenAI SDK ignores it, curl -v shows it.
WWW_AUTHENTICATE: Final = (b"www-authenticate", b'Bearer realm="clawproxy"')
MISSING_KEY_MESSAGE: Final = "missing API key: send Authorization: Bearer <key>"
WRONG_SCHEME_MESSAGE: Final = "unsupported authorization scheme: send Authorization: Bearer <key>"
DUPLICATE_HEADER_MESSAGE: Final = "send exactly one Authorization header"
INVALID_KEY_MESSAGE: Final = "invalid API key"
_BEARER: Final = b"bearer"
_SETTING: Final = "auth.api_keys_file"


class KeyFileError(ConfigError):
    """The key file cannot be read or has a bad line. The message names the file and the
    line, never a key."""

    def __init__(self, message: str) -> None:
        super().__init__(f"{_SETTING}: {message}", key=_SETTING)


def key_digest(key: bytes) -> bytes:
    """The SHA-256 digest under which a key is stored and compared."""
    return hashlib.sha256(key).digest()


def default_label(key: str) -> str:
    """``key-`` plus the first 8 hex digits of the key's SHA-256: safe to log."""
    return "key-" + key_digest(key.encode("ascii")).hex()[:8]


def _refuse(message: str) -> AuthenticationFailed:
    return AuthenticationFailed(message, headers=(WWW_AUTHENTICATE,))


# (label or None, key, where it came from for error messages)
_Source = tuple[str | None, str, str]


def _entries(sources: Iterable[_Source]) -> tuple[tuple[bytes, str], ...]:
    """``(digest, label)`` pairs; raises ValueError on a bad key or label, or a duplicate
    key. Messages name where the key came from, never the key."""
    seen: dict[bytes, str] = {}
    entries: list[tuple[bytes, str]] = []
    for label, key, where in sources:
        try:
            check_api_key(key)
            if label is not None:
                check_key_label(label)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        digest = key_digest(key.encode("ascii"))
        if digest in seen:
            raise ValueError(f"{where}: duplicate key (the same as {seen[digest]})")
        seen[digest] = where
        entries.append((digest, label if label is not None else "key-" + digest.hex()[:8]))
    return tuple(entries)


def _read_key_file(path: str) -> list[_Source]:
    """The keys in ``path``: ``KEY`` or ``LABEL KEY`` a line; blanks and ``#`` lines skipped.
    Raises KeyFileError naming the line."""
    try:
        with open(path, "rb") as stream:
            mode = os.fstat(stream.fileno()).st_mode
            data = stream.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path} is larger than {MAX_KEY_FILE_BYTES} bytes")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s %s can be read by other users; chmod 600 it", _SETTING, path)
    sources: list[_Source] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        where = f"{path} line {number}"
        if not line.isascii():
            raise KeyFileError(f"{where}: only ASCII is allowed in keys and labels")
        fields = line.decode("ascii").split()
        if len(fields) > 2:
            raise KeyFileError(f"{where}: expected 'KEY' or 'LABEL KEY', found {len(fields)} words")
        label, key = (None, fields[0]) if len(fields) == 1 else (fields[0], fields[1])
        sources.append((label, key, where))
    return sources


class KeyStore:
    """The accepted API keys (as digests) and their labels."""

    __slots__ = ("_entries", "_file", "_fixed")

    def __init__(self, keys: Iterable[tuple[str | None, str]], *, file: str | None = None) -> None:
        """``keys`` are the fixed ``(label, key)`` pairs (label None for the default), named
        ``auth.api_keys[i]`` in errors; ``file``, if given, is read now and by every
        ``reload()``. Raises ValueError for a bad or duplicate fixed key, KeyFileError for
        any problem with the file (including a key it repeats from ``keys``)."""
        self._fixed = [(label, key, f"auth.api_keys[{i}]") for i, (label, key) in enumerate(keys)]
        self._file = file
        self._entries = _entries(self._fixed)
        if file is not None:
            self._entries = self._load()

    @classmethod
    def from_config(cls, config: AuthConfig) -> KeyStore:
        """The store for the ``auth`` section: ``api_keys`` plus ``api_keys_file``."""
        return cls(((None, key) for key in config.api_keys), file=config.api_keys_file)

    def _load(self) -> tuple[tuple[bytes, str], ...]:
        sources = list(self._fixed)
        if self._file is not None:
            sources += _read_key_file(self._file)
        try:
            entries = _entries(sources)
        except ValueError as exc:
            raise KeyFileError(str(exc)) from None
        if self._file is not None and not entries:
            log.warning("%s %s holds no keys: every request is refused", _SETTING, self._file)
        return entries

    def reload(self) -> None:
        """Reread the key file (on SIGHUP). On any error the old keys stay in force and
        KeyFileError is raised; its message never contains a key. No file: nothing to do."""
        if self._file is None:
            return
        self._entries = self._load()
        log.info("%s: loaded %d keys in all", _SETTING, len(self._entries))

    @property
    def enabled(self) -> bool:
        """False when no keys are configured at all (no fixed keys and no key file)."""
        return bool(self._fixed) or self._file is not None

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<KeyStore keys={len(self)} file={self._file!r}>"

    def authenticate(self, authorization: bytes | None) -> str:
        """The label of the key in an ``Authorization`` header value, or AuthenticationFailed
        (401, with WWW-Authenticate) if it is missing, not Bearer, empty, too long or not an
        accepted key. The scheme is case-insensitive; the key is exact, byte for byte."""
        if authorization is None:
            raise _refuse(MISSING_KEY_MESSAGE)
        if len(authorization) > MAX_AUTHORIZATION_BYTES:
            raise _refuse(INVALID_KEY_MESSAGE)
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() != _BEARER:
            raise _refuse(WRONG_SCHEME_MESSAGE)
        # RFC 6750 2.1: "Bearer" 1*SP token. Nothing else is stripped: "key " is not "key".
        token = token.lstrip(b" ")
        if not token:
            raise _refuse(MISSING_KEY_MESSAGE)
        digest = key_digest(token)
        label: str | None = None
        for stored, name in self._entries:
            # Every digest is compared, match or not: the loop's time does not depend on
            # which key (if any) matched.
            if hmac.compare_digest(digest, stored):
                label = name
        if label is None:
            raise _refuse(INVALID_KEY_MESSAGE)
        return label

    def check_headers(self, headers: list[tuple[bytes, bytes]]) -> str:
        """``authenticate`` on a request's headers (lower-case names). Two Authorization
        headers are refused: proxies disagree on which one counts."""
        found: bytes | None = None
        for name, value in headers:
            if name == AUTHORIZATION_HEADER:
                if found is not None:
                    raise _refuse(DUPLICATE_HEADER_MESSAGE)
                found = value
        return self.authenticate(found)
