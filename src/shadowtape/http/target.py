"""The request target exactly as on the wire, and its query, kept spelled as it came.

A request target (`/p/a%2Fb?x=1&a&y=rY3NFD4=&d=/`) is wire text (see `headers`): the bytes of
the HTTP/1.x request line or of HTTP/2's `:path`, decoded with surrogateescape. Servers, caches
and URL signatures see those bytes, not their meaning: `a` and `a=` differ to some servers, a
signature covers `rY3NFD4=` and not `rY3NFD4%3D`. So the raw target is what replay sends, and
the decoded pairs are a view for analysis and for rules that change a value.

Decoding a query component is `parse_qsl(keep_blank_values=True)`'s: `+` is a space, `%XX` an
escaped byte, the bytes UTF-8 with surrogateescape (so no byte is lost); items are separated by
`&` only, an empty item (`a=1&&b=2`) is no parameter, an item without `=` is a parameter with
an empty value. Encoding a changed component is `urlencode`'s (`quote_plus`, nothing safe),
which is also what replay sent for every parameter before raw targets were kept.

The rewrite rule (`rewrite_query`): the result decodes to exactly the new pairs, in their order.
Every parameter whose decoded (name, value) is unchanged keeps its raw spelling; a parameter
whose value changed keeps the spelling of its name (and the other way round), and a bare key
stays bare while its value stays empty; new parameters are spelled by the encoder where they
stand in the new pairs (appended, when the caller appended them); removed ones are dropped.
Unchanged pairs are found by longest matching runs (difflib); in the gaps between those runs a
new pair takes the spelling of an old one with the same name, else of one with the same value.
Path segments follow the same rule, one segment at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from urllib.parse import quote, quote_plus, unquote_to_bytes, urlsplit

from shadowtape.http.headers import encode

Pairs = list[tuple[str, str]]

# RFC 3986 pchar minus "/": what a path segment may hold unescaped.
SEGMENT_SAFE = "-._~!$&'()*+,;=:@"
_DEFAULT_PORTS = {"http": 80, "https": 443}


# --- components ------------------------------------------------------------------------------


def decode_component(raw: str) -> str:
    """A query name or value as it means: `+` a space, `%XX` a byte, UTF-8 with escapes."""
    if "+" in raw:
        raw = raw.replace("+", " ")
    if "%" not in raw:
        return raw
    return unquote_to_bytes(encode(raw)).decode("utf-8", "surrogateescape")


def encode_component(text: str) -> str:
    """The form-urlencoded spelling of a query name or value (what `urlencode` writes)."""
    return quote_plus(encode(text), safe="")


def decode_segment(raw: str) -> str:
    """A path segment as it means: `%XX` a byte (`+` stays a plus in a path)."""
    if "%" not in raw:
        return raw
    return unquote_to_bytes(encode(raw)).decode("utf-8", "surrogateescape")


def encode_segment(text: str) -> str:
    return quote(encode(text), safe=SEGMENT_SAFE)


def respell_segment(raw: str, value: str) -> str:
    """`raw` when it already means `value`, else `value` freshly encoded."""
    return raw if decode_segment(raw) == value else encode_segment(value)


def replace_segment(path: str, index: int, value: str) -> str:
    """The path with segment `index` (0 is the empty one before the first "/") meaning
    `value`; every other segment keeps its spelling. IndexError past the last segment."""
    segments = path.split("/")
    segments[index] = respell_segment(segments[index], value)
    return "/".join(segments)


# --- the query -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueryParam:
    """One `&`-separated item of a raw query, with its decoded name and value."""

    raw: str  # as spelled: "a", "a=", "x=%2C"; "" for an empty item between "&&"
    name: str
    value: str

    @property
    def has_eq(self) -> bool:
        return "=" in self.raw

    @property
    def empty(self) -> bool:
        """An empty item carries no parameter (parse_qsl skips it too)."""
        return not self.raw


def _param(raw: str) -> QueryParam:
    name, _, value = raw.partition("=")
    return QueryParam(raw, decode_component(name), decode_component(value))


def parse_query(raw_query: str) -> list[QueryParam]:
    """Every item of a raw query string (without its "?"), empty ones included, in order."""
    return [_param(item) for item in raw_query.split("&")]


def query_pairs(raw_query: str | None) -> Pairs:
    """The decoded (name, value) pairs of a raw query, as parse_qsl(keep_blank_values=True)."""
    if not raw_query:
        return []
    return [(p.name, p.value) for p in parse_query(raw_query) if not p.empty]


def build_query(pairs: Sequence[tuple[str, str]]) -> str:
    """A query spelled from pairs alone, for data that has no raw target."""
    return "&".join(f"{encode_component(n)}={encode_component(v)}" for n, v in pairs)


def _respell(old: QueryParam, name: str, value: str) -> str:
    raw_name, eq, raw_value = old.raw.partition("=")
    spelled_name = raw_name if old.name == name else encode_component(name)
    if value == old.value and (eq or not value):
        item = spelled_name + eq + raw_value
    else:
        item = f"{spelled_name}={encode_component(value)}"
    # ("", "") spelled bare would be an empty item, which is no parameter at all.
    return item or "="


def _fresh(name: str, value: str) -> str:
    return f"{encode_component(name)}={encode_component(value)}"


def rewrite_query(raw_query: str, new_pairs: Sequence[tuple[str, str]]) -> str:
    """`raw_query` changed to mean `new_pairs`, re-encoding only what changed (module doc)."""
    params = parse_query(raw_query)
    real = [p for p in params if not p.empty]
    old = [(p.name, p.value) for p in real]
    new = [(n, v) for n, v in new_pairs]
    if old == new:
        return raw_query
    if len(old) == len(new) and all(o[0] == n[0] for o, n in zip(old, new, strict=True)):
        # Only values changed (sanitize, correlation): each item in place, empties kept.
        wanted = iter(new)
        items = []
        for p in params:
            if p.empty:
                items.append(p.raw)
                continue
            name, value = next(wanted)
            same = p.name == name and p.value == value
            items.append(p.raw if same else _respell(p, name, value))
        return "&".join(items)
    opcodes = SequenceMatcher(None, old, new, autojunk=False).get_opcodes()
    # Old items outside the matched runs, and which of them each new pair takes. A pair that
    # is the same as one of them keeps that item's spelling wherever it moved (the matcher
    # keeps one of two crossing runs, and the other would be respelled otherwise).
    spare = {i for tag, i1, i2, _, _ in opcodes if tag != "equal" for i in range(i1, i2)}
    taken: dict[int, int] = {}
    for tag, _, _, j1, j2 in opcodes:
        if tag == "equal":
            continue
        for j in range(j1, j2):
            k = next((i for i in sorted(spare) if old[i] == new[j]), None)
            if k is not None:
                spare.discard(k)
                taken[j] = k
    out: list[str] = []
    for tag, i1, i2, j1, j2 in opcodes:
        if tag == "equal":
            out += [real[i].raw for i in range(i1, i2)]
            continue
        unused = [i for i in range(i1, i2) if i in spare]
        for j in range(j1, j2):
            name, value = new[j]
            k = taken.get(j)
            # Else the same name first (a value changed), else the same value (a renamed key).
            if k is None:
                k = next((i for i in unused if real[i].name == name), None)
            if k is None:
                k = next((i for i in unused if real[i].value == value), None)
            if k is None:
                out.append(_fresh(name, value))
                continue
            if k in unused:
                unused.remove(k)
                spare.discard(k)
            out.append(_respell(real[k], name, value))
    return "&".join(out)


# --- the whole target ------------------------------------------------------------------------


def split_target(target: str) -> tuple[str, str | None]:
    """(path, raw query), the query None when there is no "?" (an empty one is "")."""
    path, sep, query = target.partition("?")
    return path, query if sep else None


def join_target(path: str, query: str | None) -> str:
    return path if query is None else f"{path}?{query}"


def target_path(target: str) -> str:
    return target.partition("?")[0]


def build_target(path: str | None, pairs: Sequence[tuple[str, str]]) -> str:
    """A target from the parsed view alone (datasets without a raw target: schema v1, importers
    that only have pairs), spelled as replay always spelled it: `path?` + urlencode(pairs), and
    a path that still carries its own query string sends that string when there are no pairs."""
    base, inline = split_target(path or "/")
    if not base.startswith("/"):
        base = "/" + base
    if pairs:
        return f"{base}?{build_query(pairs)}"
    return f"{base}?{inline}" if inline else base


def update_target(target: str, path: str, pairs: Sequence[tuple[str, str]]) -> str:
    """The raw target after a stage changed its parsed view: the path replaced where it differs
    from the target's, the query rewritten by `rewrite_query`; unchanged parts stay verbatim."""
    old_path, old_query = split_target(target)
    new_path = old_path if path == old_path else path
    if old_query is None:
        return join_target(new_path, build_query(pairs) if pairs else None)
    if query_pairs(old_query) == list(pairs):
        return join_target(new_path, old_query)
    query = rewrite_query(old_query, pairs)
    return join_target(new_path, query if query or pairs else None)


def target_of_url(url: str) -> str:
    """The request target of an absolute URL: everything after the authority, unparsed and
    not re-encoded, without the fragment (never sent); "/" when the URL has no path."""
    start = url.find("://")
    rest = url[start + 3 :] if start != -1 else url
    end = min((i for i in (rest.find(c) for c in "/?#") if i != -1), default=len(rest))
    target = rest[end:].partition("#")[0]
    return target if target.startswith("/") else "/" + target


# --- base URLs -------------------------------------------------------------------------------


def base_prefix(base_url: str) -> str:
    """A base URL without a trailing slash (`http://staging:8080/api`), to put a target after."""
    stripped = base_url.rstrip("/")
    base_path = urlsplit(base_url).path.rstrip("/")
    return stripped[: len(stripped) - len(base_path)] + base_path


def host_header(base_url: str) -> str:
    """The Host value for a base URL: host (IPv6 bracketed) and the port unless default."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default = _DEFAULT_PORTS.get(parts.scheme, 80)
    return host if parts.port in (None, default) else f"{host}:{parts.port}"


def join_url(prefix: str, target: str) -> str:
    """A base prefix and a raw target as one URL, the target not re-encoded."""
    return prefix + (target if target.startswith("/") else "/" + target)
