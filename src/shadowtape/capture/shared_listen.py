"""A mitmproxy reverse-proxy mode that serves a listening socket it was handed.

mitmproxy 11.0.2 binds its own socket (`asyncio.start_server(handler, host, port)` in
`proxy/mode_servers.py`): no SO_REUSEPORT, no way to pass a socket in. Its modes and server
instances are registries, though (`ProxyMode.__init_subclass__`,
`ServerInstance.__init_subclass__`): this module adds one mode, a reverse proxy in every
respect (`isinstance(mode, ReverseMode)` holds, so the layers and addons treat it as one),
whose server accepts on the socket `capture --workers` handed to this process. Only the
worker processes import it; a user's `mitmdump` never sees it.
"""

from __future__ import annotations

import asyncio
import socket

from mitmproxy.proxy import layers, mode_servers, mode_specs
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layer import Layer

_LISTENING: list[socket.socket] = []


def serve_socket(sock: socket.socket) -> None:
    """The listening socket the next proxy started in this process accepts on."""
    _LISTENING[:] = [sock]


class ShadowtapeworkerMode(mode_specs.ReverseMode):
    """`shadowtapeworker:URL@HOST:PORT`: a reverse proxy to URL on the handed-over socket."""

    description = "reverse proxy (capture worker)"


class _HandedSocketInstance(mode_servers.AsyncioServerInstance[ShadowtapeworkerMode]):
    def make_top_layer(self, context: Context) -> Layer:
        return layers.modes.ReverseProxy(context)

    async def listen(self, host: str, port: int) -> list[asyncio.Server]:  # type: ignore[override]
        if not _LISTENING:
            raise OSError("no listening socket was handed to this capture worker")
        return [await asyncio.start_server(self.handle_stream, sock=_LISTENING[0])]


MODE_NAME = ShadowtapeworkerMode.type_name
