"""Packet drops that a pcapng file records about itself (Interface Statistics Blocks).

dumpcap and Wireshark end a capture file with one statistics block per interface; its
`isb_ifdrop` says how many packets the interface or kernel dropped while that file was
written. Read from the file's end, block by block backwards (pcapng repeats each block's
length after it for exactly this), so a large file is not read through.
"""

from __future__ import annotations

import struct
from pathlib import Path

_SHB = 0x0A0D0D0A
_ISB = 5
_ISB_IFDROP = 5
_MAX_BLOCKS_BACK = 64


def interface_drops(path: Path) -> int | None:
    """The sum of `isb_ifdrop` over the file's interfaces, or None when it records none
    (pcap files, compressed files, captures that ended without statistics)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
            if len(head) < 12 or struct.unpack("<I", head[:4])[0] != _SHB:
                return None
            order = "<" if head[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
            end = fh.seek(0, 2)
            total: int | None = None
            for _ in range(_MAX_BLOCKS_BACK):
                if end < 28:
                    break
                fh.seek(end - 4)
                (length,) = struct.unpack(order + "I", fh.read(4))
                if length < 12 or length > end or length % 4:
                    break
                start = end - length
                fh.seek(start)
                block = fh.read(length)
                (kind,) = struct.unpack_from(order + "I", block, 0)
                if kind != _ISB:
                    break
                drops = _ifdrop(block, order)
                if drops is not None:
                    total = (total or 0) + drops
                end = start
            return total
    except OSError:
        return None


def _ifdrop(block: bytes, order: str) -> int | None:
    pos = 20  # type, length, interface id, timestamp high and low
    limit = len(block) - 4
    while pos + 4 <= limit:
        code, size = struct.unpack_from(order + "HH", block, pos)
        if code == 0:
            break
        if code == _ISB_IFDROP and size == 8:
            return struct.unpack_from(order + "Q", block, pos + 4)[0]
        pos += 4 + ((size + 3) & ~3)
    return None
