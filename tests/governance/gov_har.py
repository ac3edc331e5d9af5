"""A small HAR file, as browsers' dev tools write them, for import tests."""

import json
from pathlib import Path


def _pairs(**values: str) -> list[dict[str, str]]:
    return [{"name": k.replace("_", "-"), "value": v} for k, v in values.items()]


def write_har(path: Path, n: int = 4) -> Path:
    sizes = {"headersSize": -1, "cookies": []}
    entries = [
        {
            "startedDateTime": f"2026-11-30T10:00:{i:02d}.000Z",
            "time": 12,
            "request": {
                "method": "GET", "url": f"https://shop.example.com/api/items/{i}?page=1",
                "httpVersion": "HTTP/1.1", "bodySize": 0, **sizes,
                "headers": _pairs(Host="shop.example.com", Authorization=f"Bearer secret-{i}"),
                "queryString": _pairs(page="1"),
            },
            "response": {
                "status": 200, "statusText": "OK", "httpVersion": "HTTP/1.1", "bodySize": 9,
                "redirectURL": "", **sizes, "headers": _pairs(Content_Type="application/json"),
                "content": {"size": 9, "mimeType": "application/json", "text": '{"id": 1}'},
            },
            "cache": {},
            "timings": {"send": 1, "wait": 10, "receive": 1},
        }
        for i in range(n)
    ]  # fmt: skip
    creator = {"name": "test", "version": "1"}
    path.write_text(json.dumps({"log": {"version": "1.2", "creator": creator, "entries": entries}}))
    return path
