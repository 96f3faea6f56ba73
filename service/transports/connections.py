"""Bounds on the HTTP listener's connections, which aiohttp leaves open-ended: at most
--max-connections at once (past it a new connection gets `503` and is closed), and a
connection that is not in a request (idle, or still sending a request's headers) for
--read-timeout-seconds is closed, so slow and idle clients cannot hold sockets. Request
bodies get the same time (see `service.transports.http_api`); WebSockets and answers being sent are in a
request and are not timed here."""

import asyncio
import contextlib
import time

from aiohttp import web

REFUSED = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
SWEEP_SECONDS = 1.0


class _Refuse(asyncio.Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:
        transport.write(REFUSED)
        transport.close()


class ConnectionGuard:
    def __init__(self, limit: int, read_timeout: float) -> None:
        self._limit = limit
        self._read_timeout = read_timeout
        self._server: web.Server | None = None
        self._in_request: dict = {}  # connection (aiohttp's RequestHandler) -> requests being handled
        self._idle_since: dict = {}  # connection -> when it was last seen outside a request
        self._sweeper: asyncio.Task | None = None
        self.refused = 0

    def protocol_factory(self, server: web.Server):
        """What the listener makes a new connection with: aiohttp's handler, or a refusal past the cap."""
        self._server = server

        def make():
            if len(server.connections) >= self._limit:
                self.refused += 1
                return _Refuse()
            return server()
        return make

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        connection = request.protocol
        self._in_request[connection] = self._in_request.get(connection, 0) + 1
        try:
            return await handler(request)
        finally:
            self._in_request[connection] -= 1
            self._idle_since[connection] = time.monotonic()

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def stop(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = time.monotonic()
            open_now = set(self._server.connections) if self._server else set()
            for table in (self._in_request, self._idle_since):
                for gone in [c for c in table if c not in open_now]:
                    del table[gone]
            for connection in open_now:
                if self._in_request.get(connection):
                    continue
                if now - self._idle_since.setdefault(connection, now) > self._read_timeout:
                    connection.force_close()
                    with contextlib.suppress(Exception):
                        if connection.transport is not None:
                            connection.transport.close()
