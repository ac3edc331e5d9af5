"""The canary corpus end to end (real Presidio, real Parquet): nothing planted survives in any
byte, ordinary values pass unaltered, one value keeps one pseudonym everywhere, verify finds
what was planted on the raw data and nothing on the output."""

from __future__ import annotations

import json
import re
import shutil
from collections import defaultdict
from pathlib import Path
from urllib.parse import unquote

import pytest
from canary import INVENTED, UA, Canary, build

from shadowtape import schema
from shadowtape.http.target import query_pairs, split_target
from shadowtape.keyed import Key
from shadowtape.sanitize import bodies, encoded, markers
from shadowtape.sanitize.literals import LiteralBoundError
from shadowtape.sanitize.manifest import MANIFEST_NAME
from shadowtape.sanitize.pipeline import SanitizeConfig, sanitize_dataset
from shadowtape.sanitize.policy import default_policy, parse_policy
from shadowtape.sanitize.verify import verify_dataset

KEY = Key(b"canary-key-0123456789abcdef-0123456789", "test")
RECALL = 0.95


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Canary:
    return build(tmp_path_factory.mktemp("canary") / "raw")


@pytest.fixture(scope="module")
def clean(canary: Canary, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("canary-clean") / "out"
    # Uncompressed, so the files' bytes can be searched as they are.
    sanitize_dataset(canary.path, out, SanitizeConfig(default_policy(), KEY), compression="none")
    return out


def _views(text: str) -> list[str]:
    """A text and everything it encodes: percent-decoded, and base64 (JWT parts too)."""
    out = [text, unquote(text), unquote(text.replace("+", " "))]
    for token in re.findall(r"[A-Za-z0-9+/_=.-]{16,}", text):
        for part in (token, *token.split(".")):
            view = encoded.base64_view(part) or encoded.base64_view(part + "=" * (-len(part) % 4))
            if view is not None:
                out += _views(view.text)
    return out


def _row_texts(path: Path) -> dict[str, str]:
    out = {}
    for ex in schema.iter_exchanges(path):
        values = [ex.path or "", ex.error or "", ex.request_target or ""]
        values += [f"{n}={v}" for n, v in ex.query + ex.request_headers + ex.response_headers]
        for side in ("request", "response"):
            body = getattr(ex, f"{side}_body")
            if body:
                headers = getattr(ex, f"{side}_headers")
                enc = next((v for n, v in headers if n.lower() == "content-encoding"), None)
                data = bodies.decode_content(body, bodies.split_encodings(enc))
                text = data.decode("utf-8", "replace")
                values.append(text)
                if text.lstrip().startswith("{"):
                    values.append(json.dumps(json.loads(text), ensure_ascii=False))
        out[ex.id] = "\n".join(v for value in values for v in _views(value))
    return out


def test_every_planted_value_is_really_in_the_raw_corpus(canary: Canary) -> None:
    texts = _row_texts(canary.path)
    assert len(canary.planted) >= 300 and len(canary.values) >= 100
    assert [p for p in canary.planted if p.value not in texts[p.row_id]] == []


def test_no_planted_value_survives_in_any_byte(canary: Canary, clean: Path) -> None:
    texts = "\n".join(_row_texts(clean).values())
    assert sorted(v for v in canary.values if v in texts) == []
    raw = b"".join(p.read_bytes() for p in sorted(clean.rglob("*")) if p.is_file())
    assert sorted(v for v in canary.values if v.encode() in raw) == []
    # The check above can see: the uncompressed files do hold the ordinary values verbatim.
    assert b"ORD-2024-000123" in raw and UA.encode() in raw


def test_ordinary_values_come_out_unaltered(canary: Canary, clean: Path) -> None:
    texts = "\n".join(_row_texts(clean).values())
    altered = sorted({o for o in canary.ordinary if o not in texts})
    # Reported in the closing note: 0 of the corpus' ordinary values are altered.
    assert altered == [], f"{len(altered)} of {len(set(canary.ordinary))} altered"


def test_one_email_one_pseudonym_in_path_query_header_and_bodies(
    canary: Canary, clean: Path
) -> None:
    rows = {ex.id: ex for ex in schema.iter_exchanges(clean)}
    for sid in sorted(canary.full_names):
        register = rows[f"{sid}-0"]
        doc = json.loads(bodies.decode_content(register.request_body, ["gzip"]))
        email = doc["owner_email"]
        assert markers.PSEUDONYM_EMAIL_RE.match(email), email
        orders = rows[f"{sid}-1"]
        assert orders.path == f"/api/users/{email}/orders"
        # The raw target agrees with the scrubbed path and query (only changed parts
        # re-spelled), so replay sends the pseudonyms.
        target_path, raw_query = split_target(orders.request_target)
        assert target_path == orders.path and query_pairs(raw_query) == orders.query
        query = dict(orders.query)
        assert query["q"] == f"orders for {email}"
        headers = dict(orders.request_headers)
        assert unquote(headers["Referer"]).startswith(f"https://shop.example/account?email={email}")
        assert dict(orders.response_headers)["Location"] == f"https://shop.example/u/{email}"
        pay = dict(bodies.parse_form(rows[f"{sid}-3"].request_body.decode()))
        assert pay["email"] == email
        # A name under a near-miss key, a query value, a header and a form field: one
        # pseudonym, word for word, made of marked words.
        name = doc["holder"]
        assert query["customer_name"] == name == headers["X-Customer-Name"] == pay["cardholder"]
        assert all(markers.is_marked_word(w) for w in name.split() if len(w) >= 3)
        # Word by word: the parts under contact.first / contact.last are the full name's.
        assert f"{doc['contact']['first']} {doc['contact']['last']}" == name


def test_propagation_replaces_a_surname_found_nowhere_else(canary: Canary, clean: Path) -> None:
    manifest = json.loads((clean / MANIFEST_NAME).read_text())
    propagation = manifest["counts"]["propagation"]
    # The invented surnames can only be found by propagation; others the lexicon may find.
    assert propagation["learned"] > 100 and propagation["applied"] >= len(INVENTED)
    rows = {ex.id: ex for ex in schema.iter_exchanges(clean)}
    notes = [json.loads(ex.request_body)["text"] for ex in rows.values() if ex.path == "/api/notes"]
    surnames = {name.split()[-1] for name in canary.full_names.values()}
    assert notes and not any(s in note for s in surnames for note in notes)
    for sid, name in canary.full_names.items():
        holder = json.loads(bodies.decode_content(rows[f"{sid}-0"].request_body, ["gzip"]))
        surname_pseudonym = holder["holder"].split()[-1]
        # The note about this person (in another session) names the same pseudonym.
        if " " not in name.split(" ", 1)[1]:
            assert any(f"Spoke to {surname_pseudonym} about" in n for n in notes), name


def test_raw_values_in_our_pseudonym_ranges_are_replaced(canary: Canary, clean: Path) -> None:
    texts = "\n".join(_row_texts(clean).values())
    for value in ("2001:db8:1::11", "240.10.20.30", "255.255.255.255"):
        assert value in "\n".join(_row_texts(canary.path).values())
        assert value not in texts
    assert "abcdefghij@klmnopqr.example.invalid" not in texts


def test_verify_recall_on_the_raw_corpus_by_location(canary: Canary) -> None:
    report = verify_dataset(canary.path, allow_unsanitized=True)
    found = {(f.row_id, f.field) for f in report.findings}
    by_location: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for p in canary.planted:
        location = p.field.split(":")[0]
        if "header" in location:
            location = ":".join(p.field.split(":")[:2])
        by_location[location][1] += 1
        by_location[location][0] += (p.row_id, p.field) in found
    recall = {loc: hit / n for loc, (hit, n) in by_location.items()}
    assert len(recall) >= 10
    assert {loc: r for loc, r in recall.items() if r < RECALL} == {}
    total = sum(h for h, _ in by_location.values()) / len(canary.planted)
    assert total >= RECALL
    assert "MANIFEST_MISSING" in report.by_entity


def test_verify_finds_nothing_on_the_output(clean: Path, cli) -> None:
    result = cli("verify", str(clean))
    assert result.exit_code == 0, result.output
    assert " 0 findings" in result.stdout


def test_sanitizing_sanitized_output_trusts_its_markers(clean: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    sanitize_dataset(clean, again, SanitizeConfig(default_policy(), KEY), compression="none")
    before = {e.id: e for e in schema.iter_exchanges(clean)}
    after = {e.id: e for e in schema.iter_exchanges(again)}
    # Pseudonyms stay as they are (the input is ours, under our key), so a second run is
    # a no-op on them and verify stays clean.
    assert [i for i in before if before[i].path != after[i].path] == []
    assert [i for i in before if before[i].query != after[i].query] == []
    assert verify_dataset(again).clean


def test_output_is_the_same_for_any_worker_count(canary: Canary, clean: Path, tmp_path) -> None:
    two = tmp_path / "two"
    config = SanitizeConfig(default_policy(), KEY)
    sanitize_dataset(canary.path, two, config, workers=2, compression="none")

    def tree(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    assert tree(two) == tree(clean)


def test_altered_or_missing_manifest_is_a_finding(clean: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(clean, copy)
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["files"][0]["rows"] += 1
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    report = verify_dataset(copy)
    assert report.by_entity["MANIFEST_ROW_COUNT"] >= 1
    first = sorted(copy.glob("*.parquet"))[0]
    first.unlink()
    assert verify_dataset(copy).by_entity["MANIFEST_MISSING_FILE"] == 1
    (copy / MANIFEST_NAME).unlink()
    assert verify_dataset(copy).by_entity["MANIFEST_MISSING"] == 1


def test_a_literal_bound_that_is_hit_stops_the_job(canary: Canary, tmp_path: Path, cli) -> None:
    text = "propagation:\n  max_literals: 5\n"
    policy = parse_policy(text, "small.yaml")
    with pytest.raises(LiteralBoundError, match="more than 5 distinct sensitive values"):
        sanitize_dataset(canary.path, tmp_path / "out", SanitizeConfig(policy, KEY))
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == []
    (tmp_path / "small.yaml").write_text(text)
    result = cli(
        "sanitize",
        str(canary.path),
        str(tmp_path / "out"),
        "--policy",
        str(tmp_path / "small.yaml"),
        "--ephemeral-key",
    )
    assert result.exit_code == 2
    errors = [x for x in result.stderr.splitlines() if x.startswith("shadowtape: error:")]
    assert len(errors) == 1 and "max_literals" in errors[0]


def test_the_summary_reports_propagation(canary: Canary, tmp_path: Path, cli) -> None:
    result = cli("sanitize", str(canary.path), str(tmp_path / "out"), "--ephemeral-key")
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if "propagated:" in x)
    assert re.search(r"\d+ values learned, \d+ further occurrences replaced", line)


def test_a_jwt_that_only_claims_to_be_ours_is_scrubbed(tmp_path: Path) -> None:
    """Our `kid` in a raw JWT's header does not make its claims safe: a forged or foreign
    token with `kid: shadowtape` and an email claim is replaced like any other."""
    import base64 as b64

    def part(obj: dict) -> str:
        return b64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    forged = f"{part({'alg': 'HS256', 'kid': 'shadowtape'})}.{part({'email': 'x@corp.lan'})}.c2ln"
    ex = schema.Exchange(
        id="j1",
        session_id="s",
        seq=0,
        started_at=1,
        method="POST",
        path="/x",
        request_headers=[("Content-Type", "application/json"), ("Authorization", forged)],
        request_body=json.dumps({"data": forged, "id_token": forged}).encode(),
    )
    with schema.DatasetWriter(tmp_path / "raw") as writer:
        writer.write_exchanges([ex])
    sanitize_dataset(tmp_path / "raw", tmp_path / "out", SanitizeConfig(default_policy(), KEY))
    assert "x@corp.lan" not in "\n".join(_row_texts(tmp_path / "out").values())
    assert verify_dataset(tmp_path / "out").clean
