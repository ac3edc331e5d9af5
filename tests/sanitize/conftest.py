"""A seeded corpus of captured traffic full of personal data and secrets, for the sanitize tests.

Every user's email, phone, card, SSN, IBAN, IP, name, street, password and tokens are planted
in nested JSON, arrays, query strings, path segments, form bodies, cookies, headers, JWTs and
gzip / brotli / deflate bodies, and listed in `Corpus.secrets`, so a test can assert that none
of them survives sanitize anywhere.
"""

from __future__ import annotations

import gzip
import json
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import brotli
import phonenumbers
import pytest
from faker import Faker

from shadowtape import schema
from shadowtape.keyed import Key, Keyed

# Test folders are not packages; canary.py (the canary corpus) is imported through sys.path.
sys.path.insert(0, str(Path(__file__).parent))
from canary import jwt as make_jwt  # noqa: E402

# The key of tests/conftest.py's test_key fixture (that module cannot be imported by name).
TEST_KEY = "shadowtape-test-key-0123456789abcdef"
USERS = 12
SESSIONS_PER_USER = 2
AREA_CODES = ("415", "212", "646", "312", "617", "303")


@dataclass
class User:
    user_id: int
    uuid: str
    email: str
    phone: str
    name: str
    street: str
    card: str
    ssn: str
    iban: str
    ip: str
    password: str
    jwt: str
    session_cookie: str
    api_key: str


@dataclass
class Corpus:
    path: Path
    users: list[User]
    # (session_id, seq) -> user index, so tests can follow one user across files.
    owner: dict[tuple[str, int], int] = field(default_factory=dict)

    @property
    def secrets(self) -> dict[str, str]:
        """Every planted sensitive value, labelled."""
        out = {}
        for i, u in enumerate(self.users):
            for label in (
                "email",
                "phone",
                "name",
                "street",
                "card",
                "ssn",
                "iban",
                "ip",
                "password",
                "jwt",
                "session_cookie",
                "api_key",
            ):
                out[f"user{i}.{label}"] = getattr(u, label)
            out[f"user{i}.card_spaced"] = " ".join(u.card[j : j + 4] for j in range(0, 16, 4))
            out[f"user{i}.email_local"] = u.email.split("@")[0]
        return out


def _phone(fake: Faker) -> str:
    while True:
        number = (
            f"+1 {fake.random_element(AREA_CODES)}-{fake.random_int(200, 999)}-"
            f"{fake.random_int(0, 9999):04d}"
        )
        if phonenumbers.is_valid_number(phonenumbers.parse(number)):
            return number


def make_users(seed: int = 4242) -> list[User]:
    fake = Faker("en_US")
    fake.seed_instance(seed)
    users = []
    for i in range(USERS):
        user_id = 70_000_000 + fake.random_int(0, 9_999_999)
        email = f"{fake.user_name()}{i}@{fake.free_email_domain()}"
        users.append(
            User(
                user_id=user_id,
                uuid=str(fake.uuid4()),
                email=email,
                phone=_phone(fake),
                name=f"{fake.first_name()} {fake.last_name()}",
                street=fake.street_address(),
                card=fake.credit_card_number(card_type="visa16"),
                ssn=f"{fake.random_int(100, 599)}-{fake.random_int(10, 99)}-"
                f"{fake.random_int(1000, 9999)}",
                iban=fake.iban(),
                ip=fake.ipv4_public(),
                password=fake.password(length=14),
                jwt=make_jwt({"sub": str(user_id), "email": email, "exp": 1900000000}),
                session_cookie=fake.sha1()[:32],
                api_key="sk_live_" + fake.pystr(min_chars=24, max_chars=24),
            )
        )
    return users


def _h(*pairs: tuple[str, str]) -> list[tuple[str, str]]:
    return list(pairs)


def _session(u: User, session_id: str, t0: int, captured_token: str) -> list[schema.Exchange]:
    """One user's visit: login, profile, search, payment, avatar, a broken body."""
    login_form = urlencode(
        [("username", u.email), ("password", u.password), ("remember", "1")]
    ).encode()
    spaced_card = " ".join(u.card[i : i + 4] for i in range(0, 16, 4))
    login_resp = json.dumps(
        {
            "access_token": u.jwt,
            "token_type": "bearer",
            "user": {"id": u.user_id, "email": u.email},
            "by_email": {u.email: {"plan": "pro"}},
        }
    ).encode()
    profile = json.dumps(
        {
            "user": {
                "id": u.user_id,
                "uuid": u.uuid,
                "name": u.name,
                "email": u.email,
                "phone": u.phone,
                "address": {"street": u.street, "country": "US"},
                "cards": [{"card": u.card, "brand": "visa"}, {"card": u.card.replace(" ", "")}],
                "notes": f"Call {u.phone} or write to {u.email}; last seen from {u.ip}.",
                "iban": u.iban,
                "ssn": u.ssn,
            },
            "meta": {"generated_at": "2026-11-26T06:34:46Z", "count": 2, "ratio": 0.5},
        }
    ).encode()
    payment = json.dumps(
        {"amount": 1999, "currency": "USD", "card": u.card, "note": f"card {spaced_card}"}
    ).encode()

    def ex(seq: int, method: str, path: str, **kw: object) -> schema.Exchange:
        return schema.Exchange(
            id=f"{session_id}-{seq}",
            session_id=session_id,
            seq=seq,
            started_at=t0 + seq * 1000,
            method=method,
            host="api.internal",
            port=443,
            scheme="https",
            path=path,
            reason="OK",
            capture_id="corpus",
            **{"status": 200, **kw},
        )

    return [
        ex(
            0,
            "POST",
            "/login",
            request_headers=_h(
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Content-Length", str(len(login_form))),
                ("X-Forwarded-For", u.ip),
            ),
            request_body=login_form,
            response_headers=_h(
                ("Content-Type", "application/json"),
                ("Content-Encoding", "gzip"),
                ("Set-Cookie", f"session={u.session_cookie}; Path=/; HttpOnly"),
                ("Date", "Thu, 26 Nov 2026 06:34:46 GMT"),
            ),
            response_body=gzip.compress(login_resp, mtime=0),
        ),
        ex(
            1,
            "GET",
            f"/users/{u.email}/profile",
            query=[("email", u.email), ("phone", u.phone), ("page", "2"), ("q", f"ip {u.ip}")],
            request_headers=_h(
                ("Authorization", f"Bearer {u.jwt}"),
                ("Cookie", f"session={u.session_cookie}; theme=dark"),
                ("X-User-Email", u.email),
                ("X-Api-Key", u.api_key),
            ),
            response_headers=_h(("Content-Type", "application/json; charset=utf-8")),
            response_body=profile,
        ),
        ex(
            2,
            "POST",
            "/payments",
            request_headers=_h(
                ("Authorization", f"Bearer {captured_token}"),
                ("Content-Type", "application/json"),
                ("Content-Encoding", "br"),
            ),
            request_body=brotli.compress(payment),
            response_headers=_h(
                ("Content-Type", "application/json"), ("Content-Encoding", "deflate")
            ),
            response_body=zlib.compress(json.dumps({"ok": True, "ssn": u.ssn}).encode()),
        ),
        ex(
            3,
            "GET",
            f"/users/{u.uuid}/avatar.png",
            response_headers=_h(("Content-Type", "image/png")),
            response_body=b"\x89PNG\r\n\x1a\n" + u.email.encode() + b"\x00\x01binary",
        ),
        ex(
            4,
            "POST",
            "/signup",
            request_headers=_h(("Content-Type", "application/json")),
            request_body=b'{"email": "'
            + u.email.encode()
            + b'", "password": "'
            + u.password.encode(),
            status=400,
            error=f"client closed connection from {u.ip}",
        ),
        ex(
            5,
            "GET",
            "/search",
            query=[("q", u.card), ("api_key", u.api_key), ("token", u.jwt)],
            response_headers=_h(("Content-Type", "text/plain")),
            response_body=f"results for {u.email}: none; ssn on file".encode(),
        ),
    ]


def write_corpus(directory: Path, users: list[User], key: Key) -> Corpus:
    """Sessions spread over several files and row groups, as a capture would roll them."""
    keyed = Keyed(key)
    corpus = Corpus(directory, users)
    rows: list[schema.Exchange] = []
    t0 = 1_764_000_000_000_000
    for n in range(SESSIONS_PER_USER):
        for i, u in enumerate(users):
            session_id = f"s{n:02d}u{i:02d}"
            captured = keyed.secret(f"capture-token-{i}")
            for e in _session(u, session_id, t0 + len(rows) * 10_000, captured):
                corpus.owner[(e.session_id, e.seq)] = i
                rows.append(e)
    roll = schema.RollPolicy(max_rows=60, row_group_rows=25)
    with schema.DatasetWriter(
        directory, metadata={"shadowtape.capture.dropped": "0"}, roll=roll
    ) as writer:
        writer.set_file_metadata({"shadowtape.capture.queue_drops": "3"})
        writer.write_exchanges(rows)
    return corpus


@pytest.fixture(scope="session")
def corpus_users() -> list[User]:
    return make_users()


@pytest.fixture(scope="session")
def raw_corpus(tmp_path_factory: pytest.TempPathFactory, corpus_users: list[User]) -> Corpus:
    # Capture's tokens are made with the key the tests sanitize with, as in real use.
    return write_corpus(tmp_path_factory.mktemp("raw"), corpus_users, Key(TEST_KEY.encode(), "t"))


@pytest.fixture(scope="session")
def clean_corpus(tmp_path_factory: pytest.TempPathFactory, raw_corpus: Corpus) -> Path:
    """The corpus sanitized once with the default policy and the test key (shared, read-only)."""
    from shadowtape.sanitize.pipeline import SanitizeConfig, sanitize_dataset
    from shadowtape.sanitize.policy import default_policy

    out = tmp_path_factory.mktemp("clean") / "out"
    config = SanitizeConfig(default_policy(), Key(TEST_KEY.encode(), "t"))
    sanitize_dataset(raw_corpus.path, out, config)
    return out


def run_cli(*args: str, env: dict[str, str] | None = None):  # noqa: ANN201 - click Result
    """The real `shadowtape` command line, in-process (so Presidio is built once per run)."""
    from click.testing import CliRunner

    from shadowtape.cli import main

    full_env = {"SHADOWTAPE_NO_CONFIG": "1", **(env or {})}
    return CliRunner().invoke(main, list(args), env=full_env, catch_exceptions=False)


@pytest.fixture
def cli():  # noqa: ANN201 - the run_cli function
    return run_cli


def decoded_text(path: Path) -> str:
    """Every value of a dataset as text, bodies decoded from their Content-Encoding."""
    from shadowtape.sanitize import bodies

    parts = []
    for ex in schema.iter_exchanges(path):
        parts += [ex.path or "", ex.error or "", json.dumps(ex.query, ensure_ascii=False)]
        for side in ("request", "response"):
            headers = getattr(ex, f"{side}_headers")
            parts.append(json.dumps(headers, ensure_ascii=False))
            body = getattr(ex, f"{side}_body")
            if body:
                enc = next((v for n, v in headers if n.lower() == "content-encoding"), None)
                data = bodies.decode_content(body, bodies.split_encodings(enc))
                parts.append(data.decode("utf-8", "replace"))
    return "\n".join(parts)


@pytest.fixture
def decoded():  # noqa: ANN201 - the decoded_text function
    return decoded_text
