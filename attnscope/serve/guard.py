"""The server's front door, as ASGI middleware: what a request must be before anything parses it.

:class:`RequestGuard` checks, in this order and before a byte of the body is read:
the ``Host`` header against an allow-list (a page of another site that rebinds its
name to 127.0.0.1 sends its own name, so it cannot reach a server on this machine);
the ``Origin`` of a POST (a form or script of another site is refused unless
``--cors`` allows that origin); the token of an API call; then the body's declared
and actual size, and the time it takes to arrive (a client sending a byte a
second is cut off). :class:`AccessLog` writes one line per request and feeds the
Prometheus metrics. Every refusal is ``{"error": message}`` JSON, like every other
error of the API.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from attnscope.serve.budget import BudgetTimeout, ByteBudget

log = logging.getLogger(__name__)
access_log = logging.getLogger("attnscope.serve.access")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
RETRY_AFTER_S = 2  # what a busy server asks a client to wait before sending again


@dataclass(frozen=True)
class GuardRules:
    """What :class:`RequestGuard` lets through: ``allowed_hosts`` (``*`` for any), the ``cors`` origin, the
    ``token`` of ``/v1`` calls, the largest body, the seconds it may take to arrive, and the bytes of all the
    bodies being read and answered at once."""

    allowed_hosts: tuple[str, ...]
    cors: str | None
    token: str | None
    max_body_bytes: int
    body_timeout_s: float
    max_pending_bytes: int


def host_name(host_header: str) -> str:
    """The name of a ``Host`` header without its port: ``[::1]:8000`` -> ``::1``, ``a.b:80`` -> ``a.b``."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def refusal(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error shape of the API."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class RequestGuard:
    """ASGI middleware: host, origin, token, body size and body time, each refused before the body is parsed."""

    def __init__(self, app: ASGIApp, rules: GuardRules) -> None:
        self.app, self.rules = app, rules
        self.pending = ByteBudget(rules.max_pending_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        problem = self._problem(scope, headers)
        if problem is None and scope["method"] == "POST":
            problem = await self._posted(scope, headers, receive, send)
            if problem is None:  # answered by the app
                return
        if problem is not None:
            await problem({"type": "http"}, _no_body, send)
            return
        await self.app(scope, receive, send)

    def _problem(self, scope: Scope, headers: Headers) -> JSONResponse | None:
        rules = self.rules
        host = host_name(headers.get("host", ""))
        if "*" not in rules.allowed_hosts and host.lower() not in rules.allowed_hosts:
            return refusal(
                400,
                f"this server does not answer to the host name {host[:100]!r}; start it with --allowed-host "
                f"{host[:100] or 'NAME'} if that is its name",
            )
        origin = headers.get("origin")
        own = {f"{scheme}://{headers.get('host', '')}" for scheme in ("http", "https")}  # https: behind a proxy
        if scope["method"] == "POST" and origin is not None and origin not in own and origin != rules.cors:
            return refusal(403, f"a page of {origin[:100]} may not call this server; start it with --cors ORIGIN")
        if rules.token is not None and scope["path"].startswith("/v1/"):
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), rules.token.encode()):
                return refusal(
                    401, "this server needs Authorization: Bearer <token>", headers={"WWW-Authenticate": "Bearer"}
                )
        return None

    async def _posted(self, scope: Scope, headers: Headers, receive: Receive, send: Send) -> JSONResponse | None:
        """Read the body, holding its declared size of the bytes all bodies may hold, and hand it to the app;
        the refusal when it cannot be (503 when the budget stays full for the body's time)."""
        declared = headers.get("content-length", "")
        amount = int(declared) if declared.isdigit() else self.rules.max_body_bytes
        deadline = anyio.current_time() + self.rules.body_timeout_s  # waiting for room counts as arriving
        try:
            async with self.pending.hold(amount, self.rules.body_timeout_s):
                body = await self._body(headers, receive, deadline)
                if isinstance(body, JSONResponse):
                    return body
                await self.app(scope, _replay(body, receive), send)
        except BudgetTimeout:
            return refusal(
                503,
                "the server is reading too many uploads; send the request again in a moment",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        return None

    async def _body(self, headers: Headers, receive: Receive, deadline: float) -> list[bytes] | JSONResponse:
        """The whole body as it came (its chunks, never joined: a copy would double its memory), or the refusal:
        above the size limit (413), or slower than the time limit (408)."""
        limit = self.rules.max_body_bytes
        declared = headers.get("content-length")
        too_large = refusal(
            413, f"the request is larger than the server's limit of {limit / 1e6:g} MB (--max-upload-mb)"
        )
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return too_large
        chunks: list[bytes] = []
        size = 0
        with anyio.move_on_after(max(deadline - anyio.current_time(), 0)) as scope:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return refusal(400, "the client went away before its request was whole")
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > limit:
                    return too_large
                if not message.get("more_body", False):
                    return chunks
        assert scope.cancelled_caught
        return refusal(408, f"the request body did not arrive within {self.rules.body_timeout_s:g} s (--body-timeout)")


def _replay(chunks: list[bytes], receive: Receive) -> Receive:
    """A receive that gives the app the body already read, chunk by chunk, then the client's own messages (a
    disconnect)."""
    pending = chunks  # consumed, so that each chunk is freed once the app has it

    async def replay() -> Message:
        if pending:
            return {"type": "http.request", "body": pending.pop(0), "more_body": bool(pending)}
        return await receive()

    return replay


Observe = Callable[[str, str, int, float, int], None]


class AccessLog:
    """ASGI middleware: one INFO line per request (client, method, path, status, milliseconds, images), also
    handed to ``observe`` (the metrics)."""

    def __init__(self, app: ASGIApp, observe: Observe | None = None) -> None:
        self.app, self.observe = app, observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500
        scope.setdefault("state", {})

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - started
            images = int(scope["state"].get("images", 0))
            client = scope.get("client")
            who = f"{client[0]}:{client[1]}" if client else "-"
            access_log.info(
                '%s "%s %s" %d %.0f ms %d image(s)', who, scope["method"], scope["path"], status, seconds * 1000, images
            )
            if self.observe is not None:
                self.observe(scope["method"], scope["path"], status, seconds, images)
