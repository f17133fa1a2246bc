"""A small asyncio TCP proxy on 127.0.0.1 for network-fault tests (no toxiproxy here).

It runs in the test's event loop and forwards bytes between a client and one upstream port.
Three faults:

- `sever()`: close every current connection at once (both sides, with a TCP reset). New
  connections are accepted and forwarded as before.
- `blackhole()`: a network partition. Nothing passes in either direction, and neither side
  learns that the other closed: bytes already read are held, the rest stays in the kernel
  buffers, sockets stay open. A new connection is accepted but goes nowhere (its AMQP
  handshake hangs), as a connect into a partition does; only a client-side timeout ends it.
- `heal()`: forwarding resumes with nothing lost, as TCP does when a partition ends (a side
  that gave up and closed in the meantime is now seen to have closed).

Example:
    async with TcpProxy(upstream_port=node.amqp_port) as proxy:
        url = proxy.url_for(node.url)
        proxy.blackhole()
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit, urlunsplit

__all__ = ["TcpProxy"]

LOOPBACK = "127.0.0.1"
#: Bytes read from one side in one go.
_CHUNK = 64 * 1024


class TcpProxy:
    """Forwards `127.0.0.1:port` to `127.0.0.1:upstream_port`, with faults on demand.

    Args:
        upstream_port: the port to forward to (on 127.0.0.1).
        port: the port to listen on; 0 picks a free one (see `port` after `start()`).

    Attributes:
        accepted: connections accepted so far.
        severed: connections closed by `sever()` so far.
    """

    def __init__(self, upstream_port: int, *, port: int = 0) -> None:
        self.upstream_port = upstream_port
        self.port = port
        self.accepted = 0
        self.severed = 0
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        state = "forwarding" if self._flowing.is_set() else "blackholed"
        return (
            f"<TcpProxy :{self.port} -> :{self.upstream_port} {state} "
            f"connections={len(self._links)}>"
        )

    @property
    def blackholed(self) -> bool:
        return not self._flowing.is_set()

    @property
    def connections(self) -> int:
        """Connections open right now (forwarded or held)."""
        return len(self._links)

    def url_for(self, url: str) -> str:
        """`url` (an AMQP URL of the upstream broker) with its port replaced by the proxy's."""
        parts = urlsplit(url)
        userinfo, _, _ = parts.netloc.rpartition("@")
        netloc = f"{userinfo}@{LOOPBACK}:{self.port}" if userinfo else f"{LOOPBACK}:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._accept, LOOPBACK, self.port)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        return self

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
        self._flowing.set()  # held handlers wake up and find their links closed
        self.sever()
        handlers = list(self._handlers)
        if handlers:
            # They end on their own once their sockets are closed; cancelling them would make
            # asyncio's server log each cancellation as an error.
            _, stuck = await asyncio.wait(handlers, timeout=5)
            for task in stuck:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- faults ----------------------------------------------------------------------

    def sever(self) -> int:
        """Close every open connection now (a reset on both sides); returns how many."""
        links = list(self._links)
        for link in links:
            link.abort()
        self.severed += len(links)
        return len(links)

    def blackhole(self) -> None:
        """Stop forwarding in both directions; keep every socket open."""
        self._flowing.clear()

    def heal(self) -> None:
        """Forward again, held bytes first."""
        self._flowing.set()

    # -- forwarding ------------------------------------------------------------------

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.accepted += 1
        link = _Link(client_w)
        self._links.add(link)
        try:
            # Into a partition, a connect goes nowhere: wait for the network to come back.
            await self._flowing.wait()
            if link.closed:
                return
            try:
                upstream_r, upstream_w = await asyncio.open_connection(LOOPBACK, self.upstream_port)
            except OSError:
                return  # upstream down: the client sees its connection close
            link.upstream = upstream_w
            if link.closed:  # severed while connecting
                link.abort()
                return
            await asyncio.gather(
                self._pump(client_r, upstream_w, link), self._pump(upstream_r, client_w, link)
            )
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            link.abort()
            self._links.discard(link)
            self._handlers.discard(task)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        try:
            while not link.closed:
                await self._flowing.wait()
                data = await reader.read(_CHUNK)
                # Read during a partition: hold it (and an EOF) until the network heals.
                await self._flowing.wait()
                if not data or link.closed:
                    break
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            # One side finished or failed: end the whole connection, as a TCP proxy does.
            link.abort()


class _Link:
    """Both sockets of one proxied connection."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.closed = False

    def abort(self) -> None:
        self.closed = True
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            transport = writer.transport
            if not transport.is_closing():
                _reset_on_close(writer)
                transport.abort()


def _reset_on_close(writer: asyncio.StreamWriter) -> None:
    # SO_LINGER 0: close() sends a RST, so the peer sees "connection reset" at once.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
