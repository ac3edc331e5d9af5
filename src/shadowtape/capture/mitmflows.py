"""mitmproxy flow files (`mitmdump -w`, `.mitm`) read one flow at a time."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from mitmproxy import exceptions, http
from mitmproxy.io import FlowReader

from shadowtape.errors import InputError


@dataclass(frozen=True, slots=True)
class ReadFlow:
    index: int
    # None for flows that are not HTTP (TCP, UDP, DNS): counted by the caller, not recorded.
    flow: http.HTTPFlow | None


def iter_flows(fh: BinaryIO, name: str) -> Iterator[ReadFlow]:
    index = 0
    stream = iter(FlowReader(fh).stream())
    while True:
        try:
            flow = next(stream)
        except StopIteration:
            return
        except exceptions.FlowReadException as exc:
            raise InputError(
                f"{name}: flow {index} is unreadable ({exc}); the file may be truncated "
                "or not a mitmproxy flow file"
            ) from None
        yield ReadFlow(index, flow if isinstance(flow, http.HTTPFlow) else None)
        index += 1
