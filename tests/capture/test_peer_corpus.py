"""The peer corpus as a conformance test: every entry of every HAR and flow file written by
other tools (`../shared/fixtures/peer-har/`, see its SOURCES.md) is imported with the real
`shadowtape import`, read back from Parquet, and compared field by field with what the file
itself holds, read independently: `json` for HAR, mitmproxy's own `FlowReader` for `.mitm`.

What the comparison allows is exactly the documented handling of an import, each checked for
what it must be rather than skipped:
  * credentials (Authorization, Cookie, Set-Cookie, credential query parameters) hold the keyed
    token of the file's value (`Keyed.secret`), names, order and every other byte kept;
  * HTTP/2 pseudo-headers are request-line data (method, scheme, authority, target), not
    headers;
  * a body is stored decoded: with the Content-Encoding undone its header goes and
    Content-Length says the decoded length; a body that does not decode keeps its bytes and
    the header, flagged undecodable;
  * `host` is the name (Host / `:authority`, lower-cased), the address connected to is
    `server_address`.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, unquote_plus, urlsplit

import brotli
import pytest
from mitmproxy import http as mhttp
from mitmproxy.io import FlowReader
from mitmproxy.net.http.url import default_port, parse_authority

from shadowtape.keyed import Keyed
from shadowtape.schema import batch_to_rows, iter_batches

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "peer-har"
NOT_IMPORTABLE = {
    "harviewer__not-json.har": "not valid JSON",
    "mitmproxy__brokenfile.har": "`log` is not an object; not a HAR file",
}
# Entries the files hold that are no HTTP exchange: a relative URL (harviewer edited two in
# each issue-23 file) names no host to send to, and a data: URL was never on any wire.
NOT_EXCHANGES = {
    ("harviewer__issue-23_chrome51.har", 1): "request.url",
    ("harviewer__issue-23_chrome51.har", 2): "request.url",
    ("harviewer__issue-23_ff47.har", 1): "request.url",
    ("harviewer__issue-23_ff47.har", 2): "request.url",
    ("harviewer__data-url.har", 0): "request.method is missing",
}
CREDENTIAL_HEADERS = {"authorization", "proxy-authorization", "x-api-key", "api-key"}
CREDENTIAL_HEADERS |= {"x-auth-token"}
SECRET_QUERY = re.compile(
    r"(?:^|[_.-])(?:token|secret|password|passwd|signature)$|api[_-]?key|access[_-]?key", re.I
)
DECODERS = {
    "gzip": gzip.decompress,
    "x-gzip": gzip.decompress,
    "br": brotli.decompress,
    "deflate": lambda b: zlib.decompress(b, -zlib.MAX_WBITS if b[:1] != b"\x78" else 15),
}
# What a body still in its coding starts with (brotli has no signature).
MAGIC = {"gzip": b"\x1f\x8b", "x-gzip": b"\x1f\x8b"}

pytestmark = pytest.mark.skipif(
    not CORPUS.is_dir(), reason=f"peer corpus not found at {CORPUS} (../shared/fixtures)"
)


def wire(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


@dataclass
class Expected:
    """One exchange as the file holds it, after only the documented handling."""

    where: str
    fields: dict[str, Any]
    # (side, index) of headers whose value is a credential: checked against Keyed.secret.
    credentials: list[tuple[str, int, str]] = field(default_factory=list)


# --- the documented handling, computed from the file's own values -------------------------


def scrub_header(keyed: Keyed, name: str, value: str) -> str:
    lower = name.lower()
    if lower == "cookie":
        items = value.split(";")
        return ";".join(_scrub_cookie_item(keyed, item) for item in items)
    if lower == "set-cookie":
        first, sep, rest = value.partition(";")
        return _scrub_cookie_item(keyed, first) + sep + rest
    if lower in CREDENTIAL_HEADERS and value:
        scheme, sep, rest = value.strip().partition(" ")
        if lower.endswith("authorization") and sep and rest.strip():
            return f"{scheme} {keyed.secret(rest.strip())}"
        return keyed.secret(value)
    return value


def _scrub_cookie_item(keyed: Keyed, item: str) -> str:
    name, eq, value = item.partition("=")
    if not eq:  # a bare word is a nameless cookie's value
        lead = item[: len(item) - len(item.lstrip())]
        word = item.strip()
        return lead + (keyed.secret(word) if word else "") + item[len(lead) + len(word) :]
    stripped = value.strip()
    quoted = len(stripped) >= 2 and stripped[0] == stripped[-1] == '"'
    inner = stripped[1:-1] if quoted else stripped
    if not inner:
        return item
    token = keyed.secret(inner)
    new = f'"{token}"' if quoted else token
    start = value.find(stripped)
    return name + eq + value[:start] + new + value[start + len(stripped) :]


def scrub_target(keyed: Keyed, target: str) -> tuple[str, list[tuple[str, str]]]:
    path, sep, query = target.partition("?")
    if not sep:
        return target, []
    items, pairs = [], []
    for item in query.split("&"):
        if not item:
            items.append(item)
            continue
        raw_name, eq, raw_value = item.partition("=")
        name, value = unquote_plus(raw_name), unquote_plus(raw_value)
        if value and SECRET_QUERY.search(name):
            value = keyed.secret(value)
            item = f"{raw_name}={quote_plus(value, safe='')}"
        items.append(item)
        pairs.append((name, value))
    return f"{path}?{'&'.join(items)}", pairs


def decoded_body(
    headers: list[tuple[str, str]], body: bytes | None, stored_decoded: bool
) -> tuple[list[tuple[str, str]], bytes | None, bool]:
    """(headers, body, undecodable) as stored. `stored_decoded`: the writer already undid the
    coding (HAR text, by the spec), unless the bytes still carry the coding's signature and
    do not decode (what mitmproxy's savehar writes for a body it could not decode)."""
    codings = [
        c.strip().lower()
        for n, v in headers
        if n.lower() == "content-encoding"
        for c in v.split(",")
        if c.strip() and c.strip().lower() != "identity"
    ]
    if not codings or not body:
        return headers, body, False
    data = body
    try:
        for coding in reversed(codings):
            data = DECODERS[coding](data)
    except Exception:
        if not stored_decoded or body.startswith(MAGIC.get(codings[-1], b"\x00\x00\x00")):
            return headers, body, True
    if stored_decoded:
        data = body
    out = []
    for n, v in headers:
        if n.lower() == "content-encoding":
            continue
        out.append((n, str(len(data))) if n.lower() == "content-length" else (n, v))
    return out, data, False


# --- HAR, read with json -------------------------------------------------------------------


def har_document(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    if path.suffix == ".zhar":
        data = zlib.decompress(data)
    return json.loads(data.decode("utf-8-sig"))


def _charset(mime: str | None, creator: str) -> str:
    m = re.search(r";\s*charset=\"?([^\";]+)", mime or "", re.I)
    if m:
        return m.group(1).strip()
    if creator == "mitmproxy":
        # mitmproxy's savehar decoded text bodies by its own guess: UTF-8 for JSON, XML and
        # JavaScript, latin-1 otherwise (mitmproxy.net.http.headers.infer_content_encoding).
        if re.search(r"json|xml|javascript|css", mime or "", re.I):
            return "utf-8"
        return "latin-1" if (mime or "").startswith("text") else "utf-8"
    return "utf-8"


def _text(content: dict[str, Any], charset: str) -> bytes | None:
    text = content.get("text")
    if text is None:
        return None
    if content.get("encoding") == "base64":
        return base64.b64decode(text)
    return text.encode(charset, "surrogateescape")


def _har_headers(items: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(h["name"], h["value"]) for h in items if not h["name"].startswith(":")]


def expected_har(path: Path, keyed: Keyed) -> Iterator[Expected]:
    doc = har_document(path)
    creator = doc["log"].get("creator", {}).get("name", "")
    for index, entry in enumerate(doc["log"]["entries"]):
        if (path.name, index) in NOT_EXCHANGES:
            continue
        req, resp = entry["request"], entry["response"]
        url = req["url"]
        parts = urlsplit(url)
        target = re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*([^#]*)", url).group(1) or "/"
        if not target.startswith("/"):
            target = "/" + target
        target, query = scrub_target(keyed, target)
        port = parts.port or {"http": 80, "https": 443}[parts.scheme]
        ip = (entry.get("serverIPAddress") or "").strip("[]")  # HAR keeps no port
        post = req.get("postData")
        if post is None:
            request_body = b""
        elif "text" in post:
            request_body = _text(post, _charset(post.get("mimeType"), creator))
        else:
            request_body = "&".join(
                f"{quote_plus(p['name'])}={quote_plus(p.get('value', ''))}" for p in post["params"]
            ).encode()
        status = resp.get("status")
        has_response = isinstance(status, int) and status > 0
        fields: dict[str, Any] = {
            "method": req["method"],
            "scheme": parts.scheme,
            "host": parts.hostname,
            "port": port,
            "server_address": ip or None,
            "request_target": target,
            "query": query,
            "http_version": req.get("httpVersion") or None,
            "request_headers": _har_headers(req.get("headers", [])),
            "request_body": request_body,
            "status": status if has_response else None,
        }
        if has_response:
            content = resp.get("content") or {}
            body = _text(content, _charset(content.get("mimeType"), creator))
            if not body:  # no text, or "": with a size, a body the writer did not keep
                body = None if (content.get("size") or 0) > 0 else b""
            headers, body, undecodable = decoded_body(
                _har_headers(resp.get("headers", [])), body, stored_decoded=True
            )
            cache = entry.get("cache") or {}
            cached_body = bool(content.get("text")) or (content.get("size") or 0) > 0
            fields.update(
                reason=resp.get("statusText") or None,
                response_headers=headers,
                response_body=body,
                response_body_undecodable=undecodable,
                response_from_cache=bool(entry.get("_fromCache"))
                or (status == 304 and cached_body)
                or (
                    any(cache.get(k) for k in ("beforeRequest", "afterRequest"))
                    and resp.get("bodySize") == 0
                    and cached_body
                ),
            )
        yield Expected(f"{path.name}: entry {index}", fields)


# --- .mitm, read with mitmproxy's FlowReader ---------------------------------------------


def _message(msg: mhttp.Message) -> tuple[list[tuple[str, str]], bytes | None, bool]:
    headers = [(wire(k), wire(v)) for k, v in msg.data.headers.fields]
    return decoded_body(headers, msg.raw_content, stored_decoded=False)


def expected_flows(path: Path, keyed: Keyed) -> Iterator[Expected]:
    with open(path, "rb") as fh:
        flows = list(FlowReader(fh).stream())
    for index, flow in enumerate(flows):
        assert isinstance(flow, mhttp.HTTPFlow), f"{path.name}: flow {index} is not HTTP"
        req = flow.request
        authority = req.host_header
        host, port = parse_authority(authority, check=False) if authority else (req.host, None)
        port = port or (default_port(req.scheme) if authority else req.port)
        peer = flow.server_conn.peername
        address = None
        if peer:
            address = f"[{peer[0]}]:{peer[1]}" if ":" in peer[0] else f"{peer[0]}:{peer[1]}"
        target, query = scrub_target(keyed, wire(req.data.path))
        request_headers, request_body, request_undecodable = _message(req)
        fields: dict[str, Any] = {
            "method": wire(req.data.method),
            "scheme": req.scheme,
            "host": host.lower(),
            "port": port,
            "server_address": address,
            "request_target": target,
            "query": query,
            "http_version": req.http_version,
            "request_headers": request_headers,
            "request_body": request_body,
            "request_body_undecodable": request_undecodable,
            "status": flow.response.status_code if flow.response else None,
        }
        if flow.response is not None:
            headers, body, undecodable = _message(flow.response)
            fields.update(
                reason=wire(flow.response.data.reason) or None,
                response_headers=headers,
                response_body=body,
                response_body_undecodable=undecodable,
                response_from_cache=False,
            )
        yield Expected(f"{path.name}: flow {index}", fields)


# --- comparing -----------------------------------------------------------------------------


def apply_credentials(keyed: Keyed, exp: Expected) -> None:
    for side in ("request_headers", "response_headers"):
        if side in exp.fields:
            exp.fields[side] = [(n, scrub_header(keyed, n, v)) for n, v in exp.fields[side]]


def mismatches(exp: Expected, row: dict[str, Any]) -> list[str]:
    out = []
    for name, want in exp.fields.items():
        got = row.get(name)
        if got != want:
            out.append(f"{exp.where}: {name}: file holds {_short(want)}, dataset has {_short(got)}")
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 300 else text[:300] + "..."


def _ip(address: str) -> str:
    return address.rsplit(":", 1)[0].strip("[]")


def corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(
        p for p in CORPUS.iterdir() if p.suffix in (".har", ".zhar", ".mitm") and p.is_file()
    )


def imported_rows(out: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for batch in iter_batches(out):
        rows.extend(batch_to_rows(batch))
    return rows


@dataclass
class Conformance:
    files: int = 0
    entries: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)


def test_every_entry_of_every_peer_file_holds_what_the_file_holds(tmp_path, cli, keyed):
    files = corpus_files()
    assert len(files) == 35, [f.name for f in files]
    result = Conformance()
    for path in files:
        if path.name in NOT_IMPORTABLE:
            continue
        out = tmp_path / path.name
        done = cli("import", path, "--out", out, "--on-error", "skip")
        assert done.exit_code == 0, f"{path.name}: {done.stderr}"
        reader = expected_flows if path.suffix == ".mitm" else expected_har
        expected = list(reader(path, keyed))
        for exp in expected:
            apply_credentials(keyed, exp)
        rows = imported_rows(out)
        skipped = [k for k in NOT_EXCHANGES if k[0] == path.name]
        for key in skipped:
            assert f"{path}: entry {key[1]}: {NOT_EXCHANGES[key]}" in done.stderr, done.stderr
        assert len(rows) == len(expected), f"{path.name}: {len(rows)} rows, {len(expected)} entries"
        result.files += 1
        result.entries += len(expected)
        result.skipped += len(skipped)
        for exp, row in zip(expected, rows, strict=True):
            result.problems += mismatches(exp, row)
    print(
        f"peer corpus: {result.entries} entries of {result.files} files compared, "
        f"{result.skipped} entries that are no HTTP exchange skipped and counted, "
        f"{len(NOT_IMPORTABLE)} files refused, {len(result.problems)} mismatches"
    )
    assert result.problems == [], "\n".join(result.problems)
    assert (result.files, result.entries, result.skipped) == (33, 226, 5)


@pytest.mark.parametrize("name", sorted(NOT_IMPORTABLE))
def test_files_that_are_not_har_give_one_clear_line(name, tmp_path, cli):
    path = CORPUS / name
    out = tmp_path / "raw"
    done = cli("import", path, "--out", out)
    assert done.exit_code == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"shadowtape: error: {path}") and NOT_IMPORTABLE[name] in line, line
    assert not out.exists() or not any(out.iterdir())


SIBLINGS = sorted(
    {p.stem for p in corpus_files() if p.suffix == ".mitm"}
    & {p.stem for p in corpus_files() if p.suffix == ".har"}
)


@pytest.mark.parametrize("stem", SIBLINGS)
def test_a_flow_file_and_its_har_export_import_alike(stem, tmp_path, cli, traffic_fields):
    """mitmproxy's savehar exported each of these HAR files from the .mitm beside it: the
    same traffic, so both importers must give the same rows."""
    rows = {}
    for suffix in (".mitm", ".har"):
        out = tmp_path / suffix[1:]
        done = cli("import", CORPUS / f"{stem}{suffix}", "--out", out)
        assert done.exit_code == 0, done.stderr
        rows[suffix] = imported_rows(out)
    with open(CORPUS / f"{stem}.mitm", "rb") as fh:
        flows = list(FlowReader(fh).stream())
    assert len(rows[".mitm"]) == len(rows[".har"]) == len(flows)
    for i, (a, b, flow) in enumerate(zip(rows[".mitm"], rows[".har"], flows, strict=True)):
        differ = {k: (a[k], b[k]) for k in traffic_fields if a[k] != b[k]}
        # What savehar does not export, so no HAR reader can know: a body mitmproxy streamed
        # without keeping it (written as an empty text), and the error of a flow that has a
        # response (`_error` is written only when there is none).
        if flow.response is not None and flow.response.raw_content is None:
            assert differ.pop("response_body") == (None, b"")
            assert differ.pop("response_body_size") == (None, 0)
        if flow.response is not None and flow.error is not None:
            assert differ.pop("error") == (flow.error.msg, None)
        # serverIPAddress is the IP alone.
        if "server_address" in differ:
            assert differ.pop("server_address") == (a["server_address"], _ip(a["server_address"]))
        assert differ == {}, f"{stem}: exchange {i}"


EXPECTED_JSON = sorted(p for p in (CORPUS.glob("*.expected.json") if CORPUS.is_dir() else []))


@pytest.mark.parametrize("path", EXPECTED_JSON, ids=lambda p: p.name)
def test_mitmproxy_reads_the_same_requests_from_these_files(path, tmp_path, cli):
    """A third reading: mitmproxy's own HAR import of the file (its test suite's expected
    output). Method, scheme, host, port and target agree with ours."""
    har = path.with_name(path.name.replace(".expected.json", ".har"))
    out = tmp_path / "raw"
    done = cli("import", har, "--out", out)
    assert done.exit_code == 0, done.stderr
    rows = imported_rows(out)
    theirs = json.loads(path.read_text())
    assert len(rows) == len(theirs)
    for ours, flow in zip(rows, theirs, strict=True):
        req = flow["request"]
        got = (ours["method"], ours["scheme"], ours["host"], ours["port"])
        assert got == (req["method"], req["scheme"], req["host"], req["port"])
        assert ours["request_target"] in (req["path"], req["path"].rstrip("?=") or "/")
        # HAR's status 0 is "no answer": ours is null.
        assert (ours["status"] or 0) == flow["response"]["status_code"]
