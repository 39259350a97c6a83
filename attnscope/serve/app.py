"""The web layer of ``attnscope serve``: a FastAPI app over a :class:`ModelService`.

Routes: ``GET /`` (the viewer page), ``GET /healthz``, ``GET /v1/model``, ``POST
/v1/predict``, ``POST /v1/explain``, ``POST /v1/similar``; the OpenAPI schema at
``/openapi.json`` and its documentation at ``/docs``.

Safety, since the images are medical: the request body is limited before it is
parsed (413), uploads are decoded in memory by the training decoder under a
bounded number of threads, every failure is a JSON ``{"error": ...}`` with a 4xx
status and never a traceback, a token (when set) is required as ``Authorization:
Bearer`` on every ``/v1`` call, no route reads a file named by a request, and CORS
headers are sent only for the origin given with ``cors``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import PurePath
from typing import Annotated, Any

import anyio
import numpy as np
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from attnscope._version import __version__
from attnscope.errors import AttnscopeError, ConfigError, DataError, RetrievalError
from attnscope.serve.batching import DynamicBatcher
from attnscope.serve.service import RAW_NOTE, ModelService, Upload, check_cam_method

log = logging.getLogger(__name__)

DECODING_THREADS = 4  # uploads decoded at once: each may hold an image of up to pixel_limit pixels
NAME_LENGTH = 120


@dataclass(frozen=True)
class ServeOptions:
    """How the app batches, what it accepts, and who may call it.

    ``token``: required as ``Authorization: Bearer TOKEN`` on the API when set;
    ``cors``: the one origin allowed to call from a browser page of its own (None: no CORS headers);
    ``max_upload_mb``: the largest request body; ``max_images``: images per request;
    ``max_k``: neighbours a similarity request may ask for.
    """

    max_batch: int = 32
    max_wait_ms: float = 5.0
    batching: bool = True
    token: str | None = None
    cors: str | None = None
    max_upload_mb: float = 20.0
    max_images: int = 16
    max_k: int = 50

    def check(self) -> None:
        if not (isinstance(self.max_batch, int) and self.max_batch >= 1):
            raise ConfigError(f"--max-batch={self.max_batch} must be an integer >= 1")
        if not 0 <= self.max_wait_ms <= 1000:
            raise ConfigError(f"--max-wait-ms={self.max_wait_ms} must lie between 0 and 1000")
        if not self.max_upload_mb > 0 or not self.max_images >= 1:
            raise ConfigError(
                f"--max-upload-mb={self.max_upload_mb} must be > 0 and --max-images={self.max_images} >= 1"
            )
        if self.token is not None and len(self.token) < 16:
            raise ConfigError(
                "--token must be at least 16 characters; make one with Python's secrets.token_urlsafe() "
                "or `openssl rand -base64 24`"
            )


class BodyLimit:
    """ASGI middleware: a request body above ``max_bytes`` is answered 413 before anything parses it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        limit = self.max_bytes / 1e6
        response = JSONResponse(
            {"error": f"the request is larger than the server's limit of {limit:g} MB (--max-upload-mb)"},
            status_code=413,
        )
        await response({"type": "http"}, _no_body, send)


class CountArrivals:
    """ASGI middleware: every POST is reported to the batcher from its arrival, so a batch waits only for
    requests that are on their way."""

    def __init__(self, app: ASGIApp, batcher: DynamicBatcher) -> None:
        self.app, self.batcher = app, batcher

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        with self.batcher.arriving():
            await self.app(scope, receive, send)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _client_name(upload: UploadFile, number: int) -> str:
    """The upload's own file name, without any folder, shortened: only ever shown, never used as a path."""
    name = PurePath((upload.filename or "").replace("\\", "/")).name
    name = "".join(ch for ch in name if ch.isprintable())[:NAME_LENGTH]
    return name or f"image {number}"


def create_app(service: ModelService, options: ServeOptions | None = None) -> FastAPI:
    """The app serving ``service``; inference runs in the batcher's thread, started with the app."""
    options = options or ServeOptions()
    options.check()
    batcher = DynamicBatcher(_batch_runner(service), options.max_batch, options.max_wait_ms, options.batching)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(
        title="attnscope",
        version=__version__,
        summary=f"Predictions, attention maps and similar cases of the run {service.run.root.name}",
        lifespan=lifespan,
    )
    app.state.batcher, app.state.service = batcher, service
    _add_error_handlers(app)
    _Api(service, batcher, options).register(app)
    app.add_middleware(BodyLimit, max_bytes=int(options.max_upload_mb * 1e6))
    if options.cors:  # outside the body limit, so that a page of that origin can read a 413's message
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=[options.cors], allow_methods=["GET", "POST"], allow_headers=["Authorization"]
        )
    app.add_middleware(CountArrivals, batcher=batcher)
    return app


def _batch_runner(service: ModelService) -> Callable[[Hashable, list[Any]], list[Any]]:
    def run(key: Hashable, images: list[Any]) -> list[Any]:
        assert isinstance(key, tuple)
        if key[0] == "predict":
            return service.predict(images)
        if key[0] == "explain":
            return service.explain(images, key[1])
        return service.similar(images, key[1])

    return run


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    """Every failure as ``{"error": message}``: the input's with a 4xx status, the server's as a bare 500."""

    @app.exception_handler(DataError)
    async def bad_image(_request: Request, error: DataError) -> JSONResponse:
        return _error(422, str(error))

    @app.exception_handler(RetrievalError)
    async def no_index(_request: Request, error: RetrievalError) -> JSONResponse:
        return _error(404, str(error))

    @app.exception_handler(AttnscopeError)
    async def bad_option(_request: Request, error: AttnscopeError) -> JSONResponse:
        return _error(400, str(error))

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail), dict(error.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem.get('loc', ())[1:]) or 'request'}: {problem.get('msg')}"
            for problem in error.errors()
        )
        return _error(422, problems or "the request is not valid")

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=error)
        return _error(500, "the server failed on this request; its log says why")


def _token_check(token: str | None) -> Callable[[Request], Awaitable[None]]:
    async def require_token(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPException(
                401, "this server needs Authorization: Bearer <token>", headers={"WWW-Authenticate": "Bearer"}
            )

    return require_token


class _Api:
    """The routes, as methods over the service, the batcher and the options (registered by :meth:`register`)."""

    def __init__(self, service: ModelService, batcher: DynamicBatcher, options: ServeOptions) -> None:
        self.service, self.batcher, self.options = service, batcher, options
        self.limiter = anyio.CapacityLimiter(DECODING_THREADS)
        self.page = resources.files("attnscope.serve").joinpath("page.html").read_text(encoding="utf-8")

    def register(self, app: FastAPI) -> None:
        authorised = [Depends(_token_check(self.options.token))]
        app.add_api_route("/", self.viewer, methods=["GET"], response_class=HTMLResponse, include_in_schema=False)
        app.add_api_route("/healthz", self.health, methods=["GET"])
        app.add_api_route("/v1/model", self.model_card, methods=["GET"], dependencies=authorised)
        for path, endpoint in (("predict", self.predict), ("explain", self.explain), ("similar", self.similar)):
            app.add_api_route(f"/v1/{path}", endpoint, methods=["POST"], dependencies=authorised)

    async def decoded(self, images: list[UploadFile]) -> tuple[list[str], list[np.ndarray]]:
        """The client's names and the decoded pixels of the uploads, decoded in threads (at most 4 at once)."""
        if len(images) > self.options.max_images:
            raise HTTPException(413, f"{len(images)} images in one request; the limit is {self.options.max_images}")
        names = [_client_name(upload, number) for number, upload in enumerate(images, 1)]
        arrays = []
        for name, upload in zip(names, images, strict=True):
            data = await upload.read()
            decode = self.service.decode
            arrays.append(await anyio.to_thread.run_sync(decode, Upload(name, data), limiter=self.limiter))
        return names, arrays

    def answer(self, names: list[str], results: list[dict], **extra: Any) -> JSONResponse:
        """The run's identity, ``extra``, and each image's result under its name (plain JSON types already,
        so the response is written directly rather than through FastAPI's encoder)."""
        service = self.service
        named = [{"name": name, **result} for name, result in zip(names, results, strict=True)]
        identity = {"run": service.run.root.name, "weights_sha256": service.weights_sha256}
        return JSONResponse({**identity, **extra, "results": named})

    async def viewer(self) -> HTMLResponse:
        return HTMLResponse(self.page, headers={"Content-Security-Policy": CONTENT_POLICY})

    async def health(self) -> dict[str, Any]:
        """Whether the server is up, and whether its API needs a token."""
        return {"status": "ok", "token_required": self.options.token is not None}

    async def model_card(self) -> dict[str, Any]:
        """The run, its classes, threshold and test metrics, the index, the limits and the batching so far."""
        stats, options = self.batcher.stats, self.options
        serving = {"batching": options.batching, "max_batch": options.max_batch, "max_images": options.max_images}
        serving |= {"batches": stats.batches, "images": stats.items, "largest_batch": stats.largest}
        return {**self.service.card(), "serving": serving}

    async def predict(
        self, images: Annotated[list[UploadFile], File(description="one or more images")]
    ) -> JSONResponse:
        """Every class's probability and the decision at the run's validation threshold, per image."""
        names, arrays = await self.decoded(images)
        results = await self.batcher.submit(("predict",), arrays)
        service = self.service
        return self.answer(names, results, threshold=service.run.threshold, operating_point=service.operating_point())

    async def explain(
        self,
        images: Annotated[list[UploadFile], File(description="one or more images")],
        method: Annotated[str, Form(description="the CAM method shown beside the attention")] = "gradcam",
    ) -> JSONResponse:
        """Every attention tap and ``method``'s CAM of the predicted class: heat map and overlay PNGs, raw values."""
        check_cam_method(method)
        names, arrays = await self.decoded(images)
        results = await self.batcher.submit(("explain", method), arrays)
        return self.answer(names, results, normalisation=RAW_NOTE)

    async def similar(
        self,
        images: Annotated[list[UploadFile], File(description="one or more images")],
        k: Annotated[int, Form(description="how many similar cases")] = 8,
    ) -> JSONResponse:
        """The ``k`` most similar indexed cases of each image, with their labels and thumbnails."""
        self.service.require_index()  # before the uploads are decoded
        if not 1 <= k <= self.options.max_k:
            raise ConfigError(f"k={k} must lie between 1 and {self.options.max_k}")
        names, arrays = await self.decoded(images)
        return self.answer(names, await self.batcher.submit(("similar", k), arrays))


# the page runs its own inline script and shows data: images; it loads nothing from anywhere else
CONTENT_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
