"""What packet capture saw and lost, on top of what every capture counts.

Kept in each file's metadata under their own prefix next to the capture counters, so
`inspect` shows them and a file says on its own how complete its capture was: every request
seen is recorded, skipped or dropped, and every response without a request is counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

from shadowtape.capture.writer import META_COUNTER_PREFIX, CaptureCounters

META_PACKET_PREFIX = "shadowtape.packets."


@dataclass(slots=True)
class PacketCounters:
    # Packet files dissected (pcap inputs, or ring files of a live capture).
    inputs: int = 0
    packets: int = 0
    # Reported by the capture (dumpcap, or the pcapng statistics block of a file):
    # dropped by the kernel (no buffer), by the interface, by dumpcap itself.
    packets_dropped_kernel: int = 0
    packets_dropped_interface: int = 0
    packets_dropped_capture: int = 0
    requests: int = 0
    responses: int = 0
    # Exchanges whose packets spread over two or more files, put back together.
    exchanges_rejoined: int = 0
    # Recorded with an error instead of a response.
    requests_without_response: int = 0
    # Responses whose request is not in the capture (it began before the capture did):
    # nothing to record them as.
    responses_without_request: int = 0
    # Messages cut at the start or end of the capture, too incomplete to read.
    messages_cut: int = 0
    # TCP streams with payload that no message could be read from (not HTTP, a connection
    # that began before the capture, HTTP/2 continued from an earlier ring file).
    streams_unreassembled: int = 0
    h2_headers_undecodable: int = 0
    # Ring files removed unread because dissection fell behind the backlog limit.
    ring_files_dropped: int = 0

    def exchanges_seen(self) -> int:
        return self.requests + self.responses_without_request

    def add(self, other: PacketCounters) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_metadata(self) -> dict[str, str]:
        out = {f"{META_PACKET_PREFIX}{k}": str(v) for k, v in asdict(self).items()}
        out[f"{META_PACKET_PREFIX}exchanges_seen"] = str(self.exchanges_seen())
        return out

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> PacketCounters | None:
        values = {}
        for f in fields(cls):
            raw = meta.get(f"{META_PACKET_PREFIX}{f.name}")
            if raw is not None and raw.isdigit():
                values[f.name] = int(raw)
        return cls(**values) if values else None


@dataclass(slots=True)
class PacketCaptureCounters(CaptureCounters):
    """The capture counters with the packet counters beside them in every file's metadata."""

    packet: PacketCounters | None = None

    def as_metadata(self) -> dict[str, str]:
        out = {
            f"{META_COUNTER_PREFIX}{f.name}": str(getattr(self, f.name))
            for f in fields(CaptureCounters)
        }
        if self.packet is not None:
            out.update(self.packet.as_metadata())
        return out
