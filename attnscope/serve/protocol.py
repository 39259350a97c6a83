"""The HTTP connection limits of ``attnscope serve``, enforced before any request reaches the app.

uvicorn's own options bound the idle time between requests on a kept-alive
connection and the size of a head that arrives in several reads (h11's largest
incomplete event). :class:`GuardedProtocol`, uvicorn's h11 protocol with more
guards, bounds the rest:

- the time a client may take to send its head: a connection whose head is not
  whole within ``header_timeout_s`` of its first byte (or of its opening) is
  closed, where a header line every few seconds would hold it forever;
- the size of a head however fast it comes (h11 parses a head that arrives in one
  read whatever its size: 10,000 headers cost 40 ms of the event loop): 431;
- the connections held at once, and each client address's share of them: one
  address that opened every connection would shut everyone else out (uvicorn
  answers 503 to every request once its limit is reached), so one more than its
  share is answered 503 and closed as it opens. Behind a reverse proxy every
  client has the proxy's address: there, set the share to the whole limit and let
  the proxy limit its clients.

Every refusal is the API's one error shape, ``{"error": ...}`` JSON, including the
answer to a request that is not HTTP. h11 is used rather than httptools because
httptools has no limit on a head's size.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from attnscope.serve.guard import RETRY_AFTER_S

if TYPE_CHECKING:
    from attnscope.serve.app import ServeOptions

log = logging.getLogger(__name__)


def closing_response(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP response, ``status`` with ``{"error": message}``, written before the connection is closed."""
    body = json.dumps({"error": message}).encode()
    retry = f"retry-after: {RETRY_AFTER_S}\r\n" if status == 503 else ""
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n{retry}"
        f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass(frozen=True)
class ConnectionRules:
    """What a connection may do before its request reaches the app (set by :func:`guarded_protocol`)."""

    header_timeout_s: float
    max_connections: int
    max_client_connections: int
    max_head_bytes: int


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's head, a bound on its size however fast it comes,
    and a share of connections per client; a server's subclass (:func:`guarded_protocol`) sets the rules and
    the count of connections per client that its connections share."""

    rules = ConnectionRules(10.0, 64, 16, 16 * 1024)
    open_by_client: ClassVar[Counter[str]] = Counter()
    _deadline: asyncio.TimerHandle | None = None
    _counted: str | None = None
    _head = b""  # the head of the request now arriving, up to its end (never more than max_head_bytes)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        address, most = (self.client[0] if self.client else ""), self.rules.max_client_connections
        if len(self.connections) > self.rules.max_connections:  # this one is counted already
            message = f"the server holds {self.rules.max_connections} connections, its most (--max-connections)"
            self._refuse(closing_response(503, "Service Unavailable", message), "found the server full")
            return
        if self.open_by_client[address] >= most:
            message = (
                f"this client already holds {most} connections, its share of the server "
                "(--max-client-connections); send the request again when one has closed"
            )
            self._refuse(closing_response(503, "Service Unavailable", message), f"holds {most} connections")
            return
        self.open_by_client[address] += 1
        self._counted = address
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._arm()
            if not self._head_fits(data):
                limit = self.rules.max_head_bytes
                message = (
                    f"the request line and headers pass the server's limit of {limit // 1024} KB (--max-header-kb)"
                )
                self._refuse(closing_response(431, "Request Header Fields Too Large", message), "sent a large head")
                return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._counted is not None:
            self.open_by_client[self._counted] -= 1
            if not self.open_by_client[self._counted]:
                del self.open_by_client[self._counted]
            self._counted = None
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 cannot read, in the API's one error shape."""
        message = f"the request is not valid HTTP/1.1 ({msg})"
        self._refuse(closing_response(400, "Bad Request", message), "sent a request that is not HTTP")

    def _head_fits(self, data: bytes) -> bool:
        """Whether the head so far ends within the limit, or has not reached it (h11 bounds only a head that
        arrives in several reads: one that comes whole in one read is parsed however large)."""
        head = self._head + data
        end = head.find(b"\r\n\r\n")
        limit = self.rules.max_head_bytes
        if (end == -1 and len(head) > limit) or end + 4 > limit:
            return False
        self._head = head if end == -1 else b""
        return True

    def _refuse(self, response: bytes, why: str) -> None:
        log.warning("%s %s; refused", self.client[0] if self.client else "a client", why)
        self.transport.write(response)
        self.transport.close()

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.rules.header_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            seconds = self.rules.header_timeout_s
            log.warning("%s did not send a whole request head within %g s; closing", client, seconds)
            self.transport.close()


def guarded_protocol(rules: ConnectionRules) -> type[H11Protocol]:
    """A :class:`GuardedProtocol` for one server: its ``rules``, and a count of connections per client of its own."""
    return type("ServerProtocol", (GuardedProtocol,), {"rules": rules, "open_by_client": Counter()})


def uvicorn_settings(options: ServeOptions) -> dict[str, Any]:
    """The keyword arguments of ``uvicorn.run`` that enforce the connection limits of ``options``."""
    return {
        "http": guarded_protocol(
            ConnectionRules(
                options.header_timeout_s,
                options.max_connections,
                options.client_connections(),
                options.max_header_kb * 1024,
            )
        ),
        "h11_max_incomplete_event_size": options.max_header_kb * 1024,
        "timeout_keep_alive": options.keep_alive_s,
        "access_log": False,  # attnscope's own access log has the images and the time of each request
        "server_header": False,
    }
