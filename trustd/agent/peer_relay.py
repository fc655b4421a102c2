"""The Workload API's public socket: records who connected, then relays to gRPC.

grpcio does not expose a connection's socket (or its SO_PEERCRED) to handlers, so the agent
accepts workload connections itself. For each one it reads the kernel's peer credentials,
opens the caller's ``/proc/<pid>``, and relays the bytes to the gRPC server's private socket
from a client socket that Linux autobinds to a unique abstract address. gRPC reports that
address as the call's peer (``unix-abstract:<name>``), which is how a handler finds the
caller. The private socket lives in a 0700 directory, so only the agent reaches it; a
connection that did not come through the relay has no entry and is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from pathlib import Path

import structlog

from trustd.agent.errors import WorkloadAttestationError
from trustd.agent.workload_attestor import WorkloadProcess, peer_credentials

log = structlog.get_logger("trustd.agent")

DEFAULT_MAX_CONNECTIONS = 1000


class _Half(asyncio.Protocol):
    """One side of a relayed connection: what it receives is written to the other side."""

    def __init__(self, link: _Link) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.other: _Half | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self is self.link.downstream:
            self.link.accepted(transport)

    def data_received(self, data: bytes) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.write(data)

    def eof_received(self) -> bool:
        other = self.other.transport if self.other is not None else None
        if other is not None and other.can_write_eof():
            other.write_eof()
            return True
        return False

    # Flow control: when this side's outgoing buffer fills, stop reading from the other.
    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.close()


class _Link:
    """A workload connection and its relay to the gRPC server."""

    def __init__(self, relay: PeerRelay) -> None:
        self.relay = relay
        self.downstream = _Half(self)
        self.upstream = _Half(self)
        self.downstream.other = self.upstream
        self.upstream.other = self.downstream
        self.process: WorkloadProcess | None = None
        self.peer: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.closed = False

    def accepted(self, transport: asyncio.Transport) -> None:
        # Nothing is relayed until the caller is recorded and the upstream connected.
        transport.pause_reading()
        if len(self.relay.links) >= self.relay.max_connections:
            log.warning("workload_api.connection_refused", reason="too many connections")
            transport.close()
            return
        try:
            self.process = WorkloadProcess.open(
                peer_credentials(transport.get_extra_info("socket"))
            )
        except WorkloadAttestationError as exc:
            log.info("workload_api.connection_refused", reason=exc.detail)
            transport.close()
            return
        self.relay.links.add(self)
        self.task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            # unix(7): binding to an empty address autobinds a unique abstract name.
            sock.bind("")
            name = sock.getsockname()
            await loop.sock_connect(sock, self.relay.upstream_path)
            await loop.create_unix_connection(lambda: self.upstream, sock=sock)
        except OSError as exc:
            sock.close()
            log.warning("workload_api.relay_failed", error=str(exc))
            self.close()
            return
        if self.closed:
            return
        self.peer = "unix-abstract:" + name[1:].decode("ascii")
        self.relay.peers[self.peer] = self
        assert self.downstream.transport is not None
        self.downstream.transport.resume_reading()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # Forget the peer name before the socket (and so the name) is released.
        if self.peer is not None:
            self.relay.peers.pop(self.peer, None)
        self.relay.links.discard(self)
        for half in (self.downstream, self.upstream):
            if half.transport is not None:
                half.transport.close()
        if self.process is not None:
            self.process.close()
            self.process = None


def _remove_stale_socket(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise WorkloadAttestationError(
            f"{path} exists and is not a socket; remove it or choose another --socket path"
        )
    path.unlink()


class PeerRelay:
    """Listens on the public Workload API socket and relays to `upstream_path`."""

    def __init__(
        self, public_path: Path, upstream_path: str, max_connections: int = DEFAULT_MAX_CONNECTIONS
    ) -> None:
        self.public_path = public_path
        self.upstream_path = upstream_path
        self.max_connections = max_connections
        self.links: set[_Link] = set()
        self.peers: dict[str, _Link] = {}
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Bind the public socket, world-connectable like SPIRE's: attestation, not file
        permissions, decides what a caller gets.

        Raises:
            WorkloadAttestationError: the path exists and is not a socket.
            OSError: the socket cannot be bound.
        """
        _remove_stale_socket(self.public_path)
        self._server = await asyncio.get_running_loop().create_unix_server(
            lambda: _Link(self).downstream, str(self.public_path)
        )
        os.chmod(self.public_path, 0o777)  # noqa: S103 - see the docstring

    def lookup(self, peer: str) -> WorkloadProcess | None:
        """The caller behind a gRPC peer string, if it came through this relay."""
        link = self.peers.get(peer)
        return link.process if link is not None else None

    async def close(self) -> None:
        """Stop accepting, drop every relayed connection and remove the public socket."""
        server, self._server = self._server, None
        if server is None:
            return  # never bound: whatever is at the path is not ours to remove
        server.close()
        for link in list(self.links):
            link.close()
        await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.public_path.unlink()
