"""The keyed function: deterministic, key-dependent, idempotent on its own tokens."""

import pytest

from shadowtape.errors import InputError, KeyMissingError
from shadowtape.keyed import Key, Keyed, is_token, looks_like_jwt

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ."
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)


def _keyed(secret: bytes = b"k" * 32) -> Keyed:
    return Keyed(Key(secret, "test"))


def test_secret_is_deterministic_and_keyed() -> None:
    assert _keyed().secret("abc") == _keyed().secret("abc")
    assert _keyed().secret("abc") != _keyed(b"j" * 32).secret("abc")
    assert is_token(_keyed().secret("abc"))


def test_secret_is_idempotent() -> None:
    keyed = _keyed()
    once = keyed.secret("session-123")
    assert keyed.secret(once) == once


def test_jwt_stays_a_jwt_without_its_claims() -> None:
    keyed = _keyed()
    out = keyed.secret(JWT)
    assert looks_like_jwt(out) and is_token(out)
    assert "John" not in out and keyed.secret(out) == out
    assert out == keyed.secret(JWT)


def test_key_loading(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv("SHADOWTAPE_KEY", raising=False)
    with pytest.raises(KeyMissingError, match="SHADOWTAPE_KEY"):
        Key.load()
    assert Key.load(ephemeral=True).source == "ephemeral"
    monkeypatch.setenv("SHADOWTAPE_KEY", "short")
    with pytest.raises(InputError, match="at least 16"):
        Key.load()
    key_file = tmp_path / "key"
    key_file.write_text("0123456789abcdef0123\n")
    key_file.chmod(0o600)  # a key others can read is refused (tests/governance)
    assert Key.load(key_file=key_file).secret == b"0123456789abcdef0123"
    assert "0123" not in repr(Key.load(key_file=key_file))
