"""The canary corpus: personal data planted in every place HTTP carries it, each value
recorded with the row and the field verify names it by.

People come from several Faker locales (not only the one the name lexicon was checked on),
plus invented names that no list holds, planted only where a context cue or propagation must
find them. Values sit in sentences, under near-miss keys (holder, cardholder, contact,
billingAddress, ...), in path segments, query values, form fields, custom headers, cookies,
Referer and Location URLs (percent-encoded), text/plain bodies, gzip and base64 bodies,
base64 and JWT-carried JSON, and error messages. Emails use non-public TLDs; IPs sit in our
own pseudonym ranges; national ids follow the shapes of Presidio's own recognizer tests.

Ordinary values (order ids, coordinates, user agents, ISO dates, SKUs, totals, product
titles) are planted beside them and listed too: they must come out unaltered.
"""

from __future__ import annotations

import base64
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlencode

from faker import Faker

from shadowtape import schema
from shadowtape.http.target import build_target

LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pl_PL")
TLDS = ("corp.internal", "host.local", "canarymail.example", "shop.test", "mail.corp", "lan")
# Names no list holds: found only through a cue, a key or propagation.
INVENTED = (("Zebulon", "Quackenbush"), ("Orsolya", "Vantongerloo"), ("Thaddeus", "Wojnarowski"))
SUFFIXES = ("Street", "Avenue", "Road", "Lane")
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.91"
# Shapes from Presidio's recognizer tests (values written for this corpus).
NATIONAL_IDS = (
    ("nhs_number", "401-023-2137"),
    ("nino", "AA 12 34 56 B"),
    ("routing_number", "121042882"),
    ("passport", "912803456"),
    ("wallet", "16Yeky6GMjeNkAiNcBY7ZhrLoMSgg1BoyZ"),
    ("device_mac", "00:1A:2B:3C:4D:5E"),
    ("ssn", "078-05-1121"),
    ("itin", "911-70-1234"),
    ("iban", "DE89370400440532013000"),
    ("tax_id", "DE123456788"),
)


@dataclass
class Planted:
    value: str
    row_id: str
    field: str  # verify's name for the place


@dataclass
class Canary:
    path: Path
    planted: list[Planted] = field(default_factory=list)
    ordinary: list[str] = field(default_factory=list)
    full_names: dict[str, str] = field(default_factory=dict)

    @property
    def values(self) -> set[str]:
        return {p.value for p in self.planted}


@dataclass(frozen=True)
class Person:
    first: str
    last: str
    email: str
    phone: str
    street: str
    city: str
    postcode: str
    dob: str
    ip6: str
    ip4: str
    card: str

    @property
    def name(self) -> str:
        return f"{self.first} {self.last}"


def people(n: int = 8, seed: int = 77) -> list[Person]:
    out = []
    for i in range(n):
        fake = Faker(LOCALES[i % len(LOCALES)])
        fake.seed_instance(seed + i)
        if i < len(INVENTED):
            first, last = INVENTED[i]
        else:
            first, last = fake.first_name(), fake.last_name()
        local = f"{first.lower()}.{last.lower()}".replace(" ", "").replace("'", "")
        local = local.encode("ascii", "ignore").decode() or f"user{i}"
        us = Faker("en_US")
        us.seed_instance(seed + 100 + i)
        out.append(
            Person(
                first=first,
                last=last,
                email=f"{local}{i}@{TLDS[i % len(TLDS)]}",
                phone=f"+1 415-555-{(1000 + 137 * i) % 10000:04d}",
                street=f"{100 + 17 * i} {us.last_name()} {SUFFIXES[i % len(SUFFIXES)]}",
                city=us.city(),
                postcode=f"{94100 + i}",
                dob=f"19{60 + i}-0{1 + i % 9}-1{i % 10}",
                ip6=f"2001:db8:{i + 1:x}::{17 * (i + 1):x}",
                ip4=f"{240 + i % 16}.{10 + i}.{20 + i}.{30 + i}",
                card=us.credit_card_number(card_type="visa16"),
            )
        )
    return out


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(claims: dict) -> str:
    header = _b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    payload = _b64url(json.dumps(claims).encode())
    return f"{header}.{payload}.{_b64url(b'sig-' + payload.encode()[:20])}"


def build(directory: Path) -> Canary:
    canary = Canary(directory)
    rows: list[schema.Exchange] = []
    crowd = people()
    t0 = 1_780_000_000_000_000
    for i, p in enumerate(crowd):
        sid = f"c{i:02d}"
        canary.full_names[sid] = p.name
        n = 0

        def ex(method: str, path: str, sid: str = sid, **kw: object) -> str:
            nonlocal n
            row_id = f"{sid}-{n}"
            # The raw request target as a client spelled it: what replay sends, and where
            # the path and query values are planted a second time.
            target = build_target(path, kw.get("query") or [])  # type: ignore[arg-type]
            rows.append(
                schema.Exchange(
                    request_target=target,
                    id=row_id,
                    session_id=sid,
                    seq=n,
                    started_at=t0 + len(rows) * 1000,
                    method=method,
                    scheme="https",
                    host="api.shop.internal",
                    port=443,
                    path=path,
                    status=kw.pop("status", 200),
                    reason="OK",
                    capture_id="canary",
                    **kw,
                )
            )
            n += 1
            return row_id

        def plant(value: str, row_id: str, where: str) -> None:
            canary.planted.append(Planted(value, row_id, where))

        order = f"ORD-2024-{123 + i:06d}"
        sku = f"SKU-{4821 + i}"
        coords = f"37.{7749 + i},-122.{4194 + i}"
        created = f"2026-11-{10 + i:02d}T06:34:46Z"
        total = f"{129 + i}.95"
        title = ("Red lamp", "Blue kettle", "Olive mug", "Ivory chair")[i % 4]
        canary.ordinary += [order, sku, coords, created, total, title, UA]

        # 1. Registration: JSON under near-miss keys, nested, gzip.
        profile = {
            "holder": p.name,
            "contact": {"first": p.first, "last": p.last},
            "owner_email": p.email,
            "billingAddress": {"line1": p.street, "city": p.city, "zip": p.postcode},
            "shipping_address": f"{p.street}, {p.city}",
            "dateOfBirth": p.dob,
            "mobilePhone": p.phone,
            "last_ip": p.ip6,
            "order": {"id": order, "sku": sku, "total": total, "title": title, "at": created},
            "geo": coords,
        }
        body = gzip.compress(json.dumps(profile).encode(), mtime=0)
        rid = ex(
            "POST",
            "/api/customers",
            request_headers=[
                ("Content-Type", "application/json"),
                ("Content-Encoding", "gzip"),
                ("User-Agent", UA),
                ("X-Forwarded-For", p.ip4),
            ],
            request_body=body,
            response_headers=[("Content-Type", "application/json")],
            response_body=json.dumps({"id": order, "created_at": created}).encode(),
        )
        plant(p.name, rid, "request_body:$.holder")
        plant(p.first, rid, "request_body:$.contact.first")
        plant(p.last, rid, "request_body:$.contact.last")
        plant(p.email, rid, "request_body:$.owner_email")
        plant(p.street, rid, "request_body:$.billingAddress.line1")
        plant(p.city, rid, "request_body:$.billingAddress.city")
        plant(f"{p.street}, {p.city}", rid, "request_body:$.shipping_address")
        plant(p.dob, rid, "request_body:$.dateOfBirth")
        plant(p.phone, rid, "request_body:$.mobilePhone")
        plant(p.ip6, rid, "request_body:$.last_ip")
        plant(p.ip4, rid, "request_header:X-Forwarded-For")

        # 2. The email in a path segment, a query value and the Referer (percent-encoded).
        referer = f"https://shop.example/account?email={quote(p.email)}&name={quote(p.name)}"
        rid = ex(
            "GET",
            f"/api/users/{quote(p.email, safe='@')}/orders",
            query=[("customer_name", p.name), ("q", f"orders for {p.email}"), ("page", "2")],
            request_headers=[("Referer", referer), ("X-Customer-Name", p.name)],
            response_headers=[
                ("Content-Type", "application/json"),
                ("Location", f"https://shop.example/u/{p.email}"),
            ],
            response_body=json.dumps(
                {"items": [{"id": order, "sku": sku, "title": title}], "next": None}
            ).encode(),
        )
        plant(p.email, rid, "path")
        plant(p.name, rid, "query:customer_name")
        plant(p.email, rid, "query:q")
        plant(p.email, rid, "request_header:Referer")
        plant(p.name, rid, "request_header:X-Customer-Name")
        plant(p.email, rid, "response_header:Location")

        # 3. A support ticket in free text: cues, an address sentence, a signature.
        ticket = (
            f"Hello, this is {p.name}. Please ship order {order} to {p.street}, {p.city} "
            f"{p.postcode} and call me on {p.phone}.\nRegards,\n{p.first}"
        )
        rid = ex(
            "POST",
            "/api/tickets",
            request_headers=[("Content-Type", "text/plain; charset=utf-8")],
            request_body=ticket.encode(),
            response_headers=[("Content-Type", "application/json")],
            response_body=json.dumps({"ticket": f"T-{1000 + i}", "status": "open"}).encode(),
        )
        plant(p.name, rid, "request_body")

        # 4. A payment form and a cookie with a display name.
        form = urlencode(
            [("cardholder", p.name), ("card_number", p.card), ("email", p.email), ("qty", "1")]
        )
        rid = ex(
            "POST",
            "/api/pay",
            request_headers=[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Cookie", f"display_name={quote(p.name)}; theme=dark"),
            ],
            request_body=form.encode(),
            response_headers=[("Content-Type", "application/json")],
            response_body=json.dumps({"ok": True, "amount": total}).encode(),
        )
        plant(p.name, rid, "request_body:cardholder")
        plant(p.card, rid, "request_body:card_number")
        plant(p.email, rid, "request_body:email")
        plant(p.name, rid, "request_header:Cookie:display_name")

        # 5. Base64: a whole text body, a JSON field, and a JWT whose payload names the user.
        inner = json.dumps({"recipient": p.name, "email": p.email}).encode()
        token = jwt({"sub": str(1000 + i), "email": p.email, "name": p.name, "exp": 1900000000})
        rid = ex(
            "POST",
            "/api/gift",
            request_headers=[("Content-Type", "application/json")],
            request_body=json.dumps(
                {"payload": base64.b64encode(inner).decode(), "data": token}
            ).encode(),
            response_headers=[("Content-Type", "text/plain")],
            response_body=base64.b64encode(f"Gift card for {p.email}".encode()),
        )
        plant(p.email, rid, "request_body:$.payload")
        plant(p.email, rid, "request_body:$.data")
        plant(p.email, rid, "response_body")

        # 6. National ids under their keys and in a sentence; a raw value that looks like ours.
        ids = {key: value for key, value in NATIONAL_IDS}
        ids["note"] = f"My NHS number is {NATIONAL_IDS[0][1]} and my passport is 912803456"
        ids["alias"] = "abcdefghij@klmnopqr.example.invalid"
        ids["broadcast"] = "255.255.255.255"
        rid = ex(
            "PUT",
            "/api/kyc",
            request_headers=[("Content-Type", "application/json")],
            request_body=json.dumps(ids).encode(),
            error=f"upstream reset while serving {p.ip4}",
        )
        for key, value in NATIONAL_IDS:
            plant(value, rid, f"request_body:$.{key}")
        plant(NATIONAL_IDS[0][1], rid, "request_body:$.note")
        plant("abcdefghij@klmnopqr.example.invalid", rid, "request_body:$.alias")
        plant("255.255.255.255", rid, "request_body:$.broadcast")
        plant(p.ip4, rid, "error")

        # 7. Propagation: the surname alone, in another session's text, with no cue.
        other = f"c{(i + 1) % len(crowd):02d}"
        rid = ex(
            "POST",
            "/api/notes",
            sid=other + "x",
            request_headers=[("Content-Type", "application/json")],
            request_body=json.dumps({"text": f"Spoke to {p.last} about {order}"}).encode(),
        )
        plant(p.last, rid, "request_body:$.text")

    with schema.DatasetWriter(
        directory, roll=schema.RollPolicy(max_rows=30, row_group_rows=12)
    ) as w:
        w.write_exchanges(rows)
    return canary
