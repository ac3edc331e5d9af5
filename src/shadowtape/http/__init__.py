"""The one HTTP core every stage uses: header codec, cookies, request targets and queries,
route templates and JSON paths.

Stages meet only through datasets, but they all read the same HTTP: how a Cookie header
splits, what `{id}` in a route means, how a query parameter is spelled. Each of those concepts
lives once, here, so capture, sanitize, replay and diff cannot drift apart on them. Nothing in
this package imports a stage, `schema.py` or any I/O: it is pure functions over strings.

Wire text convention: a header name or value, a request target or a query string is a `str`
holding the wire bytes decoded as UTF-8 with `surrogateescape` (what mitmproxy's `Headers`
does), so any byte sequence survives `headers.encode(headers.decode(b)) == b`. Only
`headers.display` turns such text into valid UTF-8 for Arrow, JSON and reports.
"""
