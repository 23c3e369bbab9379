"""A TCP proxy between a client and Redis that injects network faults on cue: the reply to a
chosen request is lost (the request reached Redis and ran; the connection drops before the
client reads the answer), or every connection is reset. Load balancers and NAT idle timeouts
do both to real deployments."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class FaultProxy:
    upstream_host: str
    upstream_port: int
    lose_reply_to: bytes | None = None
    """Arm: the first client write containing these bytes goes to Redis, its reply never
    comes back (the connection is closed instead). Disarms itself after one hit."""
    lost: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _links: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.reset_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def reset_all(self, hard: bool = True) -> None:
        """Every open connection dropped at once: reset (RST), or with `hard=False` closed
        (FIN), as an idle-timing load balancer may do either."""
        for writer in list(self._links):
            transport = writer.transport
            if not transport.is_closing():
                if hard:
                    transport.abort()
                else:
                    transport.close()
        self._links.clear()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        self._links.update((writer, up_writer))
        losing = asyncio.Event()  # set when the reply now coming must be lost

        async def client_to_redis() -> None:
            while data := await reader.read(65536):
                if self.lose_reply_to is not None and self.lose_reply_to in data:
                    self.lose_reply_to = None
                    losing.set()
                up_writer.write(data)
                await up_writer.drain()

        async def redis_to_client() -> None:
            while data := await up_reader.read(65536):
                if losing.is_set():
                    # Let Redis finish the whole request, then drop the client's link.
                    self.lost += 1
                    await asyncio.sleep(0.2)
                    writer.transport.abort()
                    return
                writer.write(data)
                await writer.drain()

        pumps = [asyncio.ensure_future(client_to_redis()), asyncio.ensure_future(redis_to_client())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        except (ConnectionError, OSError):
            pass
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for w in (writer, up_writer):
                self._links.discard(w)
                w.transport.abort()


@contextlib.asynccontextmanager
async def fault_proxy(redis_url: str) -> AsyncIterator[FaultProxy]:
    hostport = redis_url.split("://", 1)[1].split("/", 1)[0]
    host, port = hostport.rsplit(":", 1)
    proxy = FaultProxy(host, int(port))
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
