"""A small HAR file, as browsers' dev tools write them, for import tests."""

import json
from pathlib import Path


def write_har(path: Path, n: int = 4) -> Path:
    entries = []
    for i in range(n):
        entries.append(
            {
                "startedDateTime": f"2026-11-30T10:00:{i:02d}.000Z",
                "time": 12,
                "request": {
                    "method": "GET",
                    "url": f"https://shop.example.com/api/items/{i}?page=1",
                    "httpVersion": "HTTP/1.1",
                    "headers": [
                        {"name": "Host", "value": "shop.example.com"},
                        {"name": "Authorization", "value": f"Bearer secret-{i}"},
                    ],
                    "queryString": [{"name": "page", "value": "1"}],
                    "cookies": [],
                    "headersSize": -1,
                    "bodySize": 0,
                },
                "response": {
                    "status": 200,
                    "statusText": "OK",
                    "httpVersion": "HTTP/1.1",
                    "headers": [{"name": "Content-Type", "value": "application/json"}],
                    "cookies": [],
                    "content": {"size": 9, "mimeType": "application/json", "text": '{"id": 1}'},
                    "redirectURL": "",
                    "headersSize": -1,
                    "bodySize": 9,
                },
                "cache": {},
                "timings": {"send": 1, "wait": 10, "receive": 1},
            }
        )
    doc = {
        "log": {"version": "1.2", "creator": {"name": "test", "version": "1"}, "entries": entries}
    }
    path.write_text(json.dumps(doc))
    return path
