"""The listening socket `trustd serve` binds, served the way uvicorn serves it."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from trustd.server import bind_sockets
from trustd.settings import load_settings


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "[::1]:0"])
def test_accepted_connections_disable_nagle(tmp_path: Path, listen: str) -> None:
    """A response written in pieces (headers, body, TLS records) must not wait for the
    client's delayed ACK: every accepted connection has TCP_NODELAY."""
    if listen.startswith("[") and not socket.has_ipv6:
        pytest.skip("no IPv6")
    listeners = bind_sockets(load_settings(data_dir=tmp_path, listen=listen))
    tcp, uds = listeners.tcp, listeners.uds

    async def accepted_nodelay() -> int:
        loop = asyncio.get_running_loop()
        made: asyncio.Future[int] = loop.create_future()

        class Accept(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                made.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        # What uvicorn does with sockets bound before the workers start.
        server = await loop.create_server(Accept, sock=tcp)
        host, port = tcp.getsockname()[:2]
        _, writer = await asyncio.open_connection(host, port)
        try:
            return await asyncio.wait_for(made, 5)
        finally:
            writer.close()
            server.close()
            await server.wait_closed()

    try:
        assert asyncio.run(accepted_nodelay()) != 0
    finally:
        tcp.close()
        uds.close()
