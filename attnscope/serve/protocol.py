"""The HTTP connection limits of ``attnscope serve``, set on uvicorn before any request reaches the app.

uvicorn's own options bound the size of a request's head (h11's largest
incomplete event: request line and headers together), the connections held at
once (past them a request is answered 503) and the idle time between requests on
a kept-alive connection. One thing uvicorn does not bound is the time a client
may take to send its head: a client that sends a header line every few seconds
holds its connection forever. :func:`guarded_protocol` adds that deadline to
uvicorn's h11 protocol: a connection whose request head is not whole within
``header_timeout_s`` of its first byte (or of the connection opening) is closed.
h11 is used rather than httptools because httptools has no limit on a head's size.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


def guarded_protocol(header_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline on each request's head."""

    class HeaderDeadlineProtocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE:
                self._arm()
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
                log.warning("%s did not send a whole request head within %g s; closing", client, header_timeout_s)
                self.transport.close()

    return HeaderDeadlineProtocol


def uvicorn_settings(
    max_header_kb: int, header_timeout_s: float, keep_alive_s: float, max_connections: int
) -> dict[str, Any]:
    """The keyword arguments of ``uvicorn.run`` that enforce the connection limits."""
    return {
        "http": guarded_protocol(header_timeout_s),
        "h11_max_incomplete_event_size": max_header_kb * 1024,
        "timeout_keep_alive": keep_alive_s,
        "limit_concurrency": max_connections,
        "access_log": False,  # attnscope's own access log has the images and the time of each request
        "server_header": False,
    }
