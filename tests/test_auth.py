"""Tests for API-key authentication: every bad header is a 401, keys never leak."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path

import pytest

from clawproxy.config import AuthConfig, ConfigError
from clawproxy.errors import AuthenticationFailed
from clawproxy.policy import auth
from clawproxy.policy.auth import (
    INVALID_KEY_MESSAGE,
    MAX_AUTHORIZATION_BYTES,
    MISSING_KEY_MESSAGE,
    WRONG_SCHEME_MESSAGE,
    KeyFileError,
    KeyStore,
    default_label,
)

CANARY = "sk-CANARY-7d1e4f0a93b2c685"
OTHER = "sk-other-0f9e8d7c6b5a"
CHALLENGE = (b"www-authenticate", b'Bearer realm="clawproxy"')


def bearer(key: str | bytes) -> bytes:
    return b"Bearer " + (key.encode() if isinstance(key, str) else key)


def refused(store: KeyStore, header: bytes | None) -> AuthenticationFailed:
    """The 401 for ``header``, checked for the parts every refusal must have."""
    with pytest.raises(AuthenticationFailed) as info:
        store.authenticate(header)
    error = info.value
    assert error.status == 401
    assert error.headers == (CHALLENGE,)
    # Nothing of what was presented comes back: message, body, repr or headers.
    shown = f"{error} {error!r} {error.headers!r}".encode() + error.body()
    assert b"CANARY" not in shown
    assert b"\xd0" not in shown
    return error


def write_keys(tmp_path: Path, text: str, name: str = "keys") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="ascii")
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def store() -> KeyStore:
    return KeyStore([(None, CANARY), ("bob", OTHER)])


# --- the header ---------------------------------------------------------------------------


def test_right_key_returns_its_label(store: KeyStore) -> None:
    expected = "key-" + hashlib.sha256(CANARY.encode()).hexdigest()[:8]
    assert store.authenticate(bearer(CANARY)) == expected == default_label(CANARY)
    assert store.authenticate(bearer(OTHER)) == "bob"


@pytest.mark.parametrize("scheme", [b"Bearer", b"bearer", b"BEARER", b"bEaReR"])
def test_scheme_is_case_insensitive(store: KeyStore, scheme: bytes) -> None:
    assert store.authenticate(scheme + b" " + OTHER.encode()) == "bob"


def test_several_spaces_after_the_scheme_are_allowed(store: KeyStore) -> None:
    assert store.authenticate(b"Bearer   " + OTHER.encode()) == "bob"


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, MISSING_KEY_MESSAGE),
        (b"", WRONG_SCHEME_MESSAGE),
        (b"Basic " + CANARY.encode(), WRONG_SCHEME_MESSAGE),
        (b"Basic dXNlcjpwYXNz", WRONG_SCHEME_MESSAGE),
        (CANARY.encode(), WRONG_SCHEME_MESSAGE),
        (b"Bearer\t" + CANARY.encode(), WRONG_SCHEME_MESSAGE),
        (b"Bearer", MISSING_KEY_MESSAGE),
        (b"Bearer ", MISSING_KEY_MESSAGE),
        (b"Bearer    ", MISSING_KEY_MESSAGE),
        (b"Bearer sk-CANARY-wrong", INVALID_KEY_MESSAGE),
        (bearer(CANARY + " "), INVALID_KEY_MESSAGE),
        (bearer(CANARY + "\t"), INVALID_KEY_MESSAGE),
        (bearer(CANARY[:-1]), INVALID_KEY_MESSAGE),
        (bearer(CANARY + CANARY), INVALID_KEY_MESSAGE),
        (bearer(CANARY.lower()), INVALID_KEY_MESSAGE),
        (b"Bearer \xd0\xba", INVALID_KEY_MESSAGE),
        (bearer(CANARY.encode() + b"\xd0\xba"), INVALID_KEY_MESSAGE),
        (bearer(b"\xff\xfe\x00" + CANARY.encode()), INVALID_KEY_MESSAGE),
        (b"Bearer " + b"x" * (MAX_AUTHORIZATION_BYTES * 256), INVALID_KEY_MESSAGE),
    ],
)
def test_bad_headers_get_401(store: KeyStore, header: bytes | None, message: str) -> None:
    assert refused(store, header).message == message


def test_refusals_carry_the_openai_error_shape(store: KeyStore) -> None:
    error = refused(store, bearer("sk-CANARY-nope"))
    assert error.body() == (
        b'{"error":{"message":"invalid API key","type":"authentication_error",'
        b'"param":null,"code":"invalid_api_key"}}'
    )


def test_overlong_header_is_not_hashed(store: KeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[int] = []
    real = auth.key_digest
    monkeypatch.setattr(auth, "key_digest", lambda key: hashed.append(len(key)) or real(key))
    refused(store, b"Bearer " + b"a" * MAX_AUTHORIZATION_BYTES)
    assert hashed == []
    refused(store, b"Bearer " + b"a" * (MAX_AUTHORIZATION_BYTES - 7))
    assert hashed == [MAX_AUTHORIZATION_BYTES - 7]  # At the cap: checked as usual.


def test_longest_configurable_key_fits_under_the_header_cap() -> None:
    key = "k" * 1024
    assert KeyStore([("long", key)]).authenticate(bearer(key)) == "long"


@pytest.mark.parametrize("presented", [CANARY, OTHER, "sk-CANARY-wrong", "x"])
def test_every_stored_digest_is_compared(monkeypatch: pytest.MonkeyPatch, presented: str) -> None:
    """No early exit: the number of comparisons does not depend on which key matched."""
    keys = [(None, f"sk-filler-{i:04d}") for i in range(5)] + [(None, CANARY), (None, OTHER)]
    store = KeyStore(keys)
    compared: list[tuple[int, int]] = []
    real = auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    with contextlib.suppress(AuthenticationFailed):
        store.authenticate(bearer(presented))
    # One digest-length comparison per stored key: the length of a key never shows.
    assert compared == [(32, 32)] * len(keys)


def test_check_headers_finds_the_header_and_refuses_two(store: KeyStore) -> None:
    headers = [(b"host", b"x"), (b"authorization", bearer(OTHER))]
    assert store.check_headers(headers) == "bob"
    with pytest.raises(AuthenticationFailed) as info:
        store.check_headers([*headers, (b"authorization", bearer(CANARY))])
    assert info.value.headers == (CHALLENGE,)
    assert "exactly one" in info.value.message
    with pytest.raises(AuthenticationFailed, match="missing API key"):
        store.check_headers([(b"x-authorization", bearer(OTHER))])


# --- the store ----------------------------------------------------------------------------


def test_enabled() -> None:
    assert not KeyStore([]).enabled
    assert not KeyStore.from_config(AuthConfig()).enabled
    assert KeyStore([(None, OTHER)]).enabled


def test_a_store_without_keys_refuses_everything() -> None:
    refused(KeyStore([]), bearer(CANARY))


def test_from_config_uses_keys_and_file(tmp_path: Path) -> None:
    path = write_keys(tmp_path, f"carol {OTHER}\n")
    store = KeyStore.from_config(AuthConfig(api_keys=(CANARY,), api_keys_file=path))
    assert store.enabled
    assert len(store) == 2
    assert store.authenticate(bearer(CANARY)) == default_label(CANARY)
    assert store.authenticate(bearer(OTHER)) == "carol"
    assert "CANARY" not in repr(store)


@pytest.mark.parametrize(
    ("keys", "reason"),
    [
        (
            [(None, CANARY), (None, CANARY)],
            "auth.api_keys[1]: duplicate key (the same as auth.api_keys[0])",
        ),
        ([(None, CANARY + " ")], "auth.api_keys[0]: the key has whitespace"),
        ([(None, "")], "auth.api_keys[0]: the key is empty"),
        ([("bad label", CANARY)], "auth.api_keys[0]: a label is 1 to 64"),
    ],
)
def test_bad_fixed_keys(keys: list[tuple[str | None, str]], reason: str) -> None:
    with pytest.raises(ValueError) as info:
        KeyStore(keys)
    assert str(info.value).startswith(reason)
    assert "CANARY" not in str(info.value)


def test_two_keys_may_share_a_label() -> None:
    store = KeyStore([("alice", CANARY), ("alice", OTHER)])
    assert store.authenticate(bearer(CANARY)) == store.authenticate(bearer(OTHER)) == "alice"


# --- the key file -------------------------------------------------------------------------

KEY_FILE = f"""\
# Keys for the team. Lines starting with # are comments.

alice {CANARY}
   {OTHER}\r
#{OTHER}-commented-out
bot.ci_1   sk-third-key-123\t
"""


def test_key_file_with_comments_blanks_and_labels(tmp_path: Path) -> None:
    store = KeyStore([], file=write_keys(tmp_path, KEY_FILE))
    assert store.enabled
    assert len(store) == 3
    assert store.authenticate(bearer(CANARY)) == "alice"
    assert store.authenticate(bearer(OTHER)) == default_label(OTHER)
    assert store.authenticate(bearer("sk-third-key-123")) == "bot.ci_1"
    refused(store, bearer(f"#{OTHER}-commented-out"))
    refused(store, bearer("alice"))


def test_empty_key_file_locks_the_door(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = KeyStore([], file=write_keys(tmp_path, "# nobody yet\n"))
    assert store.enabled  # Fail closed: a configured file turns auth on, even when empty.
    assert len(store) == 0
    refused(store, bearer(CANARY))
    assert "holds no keys" in caplog.text


def test_reload_picks_up_a_changed_file(tmp_path: Path) -> None:
    path = write_keys(tmp_path, f"alice {CANARY}\n")
    store = KeyStore([("fixed", "sk-fixed-key")], file=path)
    assert store.authenticate(bearer(CANARY)) == "alice"
    write_keys(tmp_path, f"bob {OTHER}\n")
    store.reload()
    assert store.authenticate(bearer(OTHER)) == "bob"
    refused(store, bearer(CANARY))
    assert store.authenticate(bearer("sk-fixed-key")) == "fixed"  # Fixed keys stay.


def test_reload_without_a_file_is_a_no_op() -> None:
    store = KeyStore([(None, OTHER)])
    store.reload()
    assert store.authenticate(bearer(OTHER)) == default_label(OTHER)


def bad_reload(store: KeyStore) -> str:
    with pytest.raises(KeyFileError) as info:
        store.reload()
    assert isinstance(info.value, ConfigError)
    assert info.value.key == "auth.api_keys_file"
    message = str(info.value)
    assert message.startswith("auth.api_keys_file: ")
    assert "CANARY" not in message
    assert "\n" not in message
    return message


def test_reload_with_a_missing_file_keeps_the_old_keys(tmp_path: Path) -> None:
    path = write_keys(tmp_path, f"alice {CANARY}\n")
    store = KeyStore([], file=path)
    os.remove(path)
    assert "cannot read" in bad_reload(store)
    assert store.authenticate(bearer(CANARY)) == "alice"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (f"alice {CANARY} extra\n", "line 1: expected 'KEY' or 'LABEL KEY', found 3 words"),
        (f"\n\nalice {CANARY}\nbob {CANARY}\n", "line 4: duplicate key (the same as "),
        ("alice sk-CANARY-\x01ctl\n", "line 1: the key has whitespace, control"),
        ("alice sk-CANARY-\u00e9\n", "line 1: only ASCII is allowed"),
        (f"al/ice {CANARY}\n", "line 1: a label is 1 to 64"),
        (f"sk-fixed-key\n{CANARY}\n", "line 1: duplicate key (the same as auth.api_keys[0])"),
    ],
)
def test_reload_of_a_bad_file_keeps_the_old_keys(tmp_path: Path, text: str, reason: str) -> None:
    path = write_keys(tmp_path, f"alice {OTHER}\n")
    store = KeyStore([(None, "sk-fixed-key")], file=path)
    (tmp_path / "keys").write_bytes(text.encode("utf-8"))
    message = bad_reload(store)
    assert f"{path} {reason}" in message
    assert store.authenticate(bearer(OTHER)) == "alice"
    refused(store, bearer(CANARY))


def test_a_bad_file_at_startup_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        KeyStore.from_config(AuthConfig(api_keys_file=str(tmp_path / "absent")))
    path = write_keys(tmp_path, f"{CANARY} {CANARY} {CANARY}\n")
    with pytest.raises(KeyFileError) as info:
        KeyStore.from_config(AuthConfig(api_keys_file=path))
    assert "CANARY" not in str(info.value)


def test_oversized_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge"
    path.write_bytes(b"#" * (auth.MAX_KEY_FILE_BYTES + 1))
    with pytest.raises(KeyFileError, match="larger than"):
        KeyStore([], file=str(path))


def test_readable_key_file_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_keys(tmp_path, f"{OTHER}\n")
    KeyStore([], file=path)
    assert "chmod 600" not in caplog.text
    os.chmod(path, 0o644)
    KeyStore([], file=path)
    assert "can be read by other users; chmod 600 it" in caplog.text


def test_no_log_line_ever_holds_a_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    path = write_keys(tmp_path, KEY_FILE)
    store = KeyStore([], file=path)
    store.reload()
    for header in (bearer(CANARY), bearer("sk-CANARY-bad"), b"Basic " + CANARY.encode()):
        with contextlib.suppress(AuthenticationFailed):
            store.authenticate(header)
    (tmp_path / "keys").write_text(f"x {CANARY} y\n", encoding="ascii")
    with pytest.raises(KeyFileError):
        store.reload()
    assert "loaded 3 keys" in caplog.text
    assert "CANARY" not in caplog.text
