"""The web layer of ``attnscope serve``: a FastAPI app over a :class:`ModelService`.

Routes: ``GET /`` (the viewer page), ``GET /healthz``, ``GET /metrics`` (Prometheus),
``GET /v1/model``, ``POST /v1/predict``, ``POST /v1/explain``, ``POST /v1/similar``;
the OpenAPI schema at ``/openapi.json`` and its documentation at ``/docs``.

Safety, since the images are medical and the server may face a hostile page or
client: before any body is parsed, the host name, the origin of a POST, the token
and the body's size and arrival time are checked (:mod:`attnscope.serve.guard`);
uploads are decoded in memory by the training decoder, at most four at once, each
refused when its pixels would take more than ``max_decoded_mb``, and together
taking at most twice that to decode, as bodies being read take at most four
times ``max_upload_mb`` (:mod:`attnscope.serve.budget`); a request costs
its images times its method's forward passes, and one above ``max_cost`` is
refused; the batcher's queue is bounded (503 with ``Retry-After`` when full); a
request not answered within ``deadline_s`` is cancelled and answered 504, and one
whose client has gone is cancelled before it is computed. Every failure is a JSON
``{"error": ...}`` with its status and never a traceback; no route reads a file
named by a request; CORS headers are sent only for the origin given with ``cors``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import PurePath
from typing import Annotated, Any

import anyio
import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from attnscope._version import __version__
from attnscope.errors import AttnscopeError, ConfigError, DataError, RetrievalError
from attnscope.explain.explainer import resolve_targets
from attnscope.serve.batching import DynamicBatcher, ServerBusy, Shares
from attnscope.serve.budget import ByteBudget, decoding_memory
from attnscope.serve.guard import LOOPBACK_HOSTS, RETRY_AFTER_S, AccessLog, GuardRules, RequestGuard, refusal
from attnscope.serve.memory import give_back, limit_arenas
from attnscope.serve.metrics import ServerMetrics
from attnscope.serve.service import RAW_NOTE, ModelService, Upload, check_cam_method

log = logging.getLogger(__name__)

DECODING_THREADS = 4  # uploads decoded at once
DECODING_BUDGET = 2  # working memory of the uploads decoded at once, in images of max_decoded_mb (ByteBudget)
LARGE_DECODE = 32_000_000  # bytes of working memory past which a decode's freed memory is returned at once
PENDING_BODIES = 4  # bytes of request bodies held at once, in bodies of max_upload_mb
NAME_LENGTH = 120
DISCONNECT_POLL_S = 0.25
# forward-pass equivalents of one map beside the attention (the attention and the prediction are one pass),
# as benchmarks/cam_speed.py measured them on ResNet-50 at 224 px, the largest model it times; a method not
# listed costs about one forward and one backward pass
MAP_COST = {
    "scorecam": 2300,
    "ablationcam": 1600,
    "occlusion": 300,
    "integrated_gradients": 90,
    "smoothgrad": 55,
    "fullgrad": 4,
    "guided_backprop": 4,
    "guided_gradcam": 4,
}
ONE_MAP_COST = 2


def request_cost(method: str | None, images: int) -> int:
    """What a request costs in forward passes: one per image, plus its map method's (``None``: no map)."""
    return images * (1 + (0 if method is None else MAP_COST.get(method, ONE_MAP_COST)))


@dataclass(frozen=True)
class ServeOptions:
    """How the app batches, what it accepts, who may call it, and how long anything may take.

    ``token``: required as ``Authorization: Bearer TOKEN`` on the API when set;
    ``cors``: the one origin allowed to call from a browser page of its own (None: no CORS headers);
    ``allowed_hosts``: the names the server answers to (``Host``; ``*`` for any; empty: loopback names);
    ``max_upload_mb``: the largest request body; ``body_timeout_s``: the longest it may take to arrive;
    ``max_images``: images per request; ``max_decoded_mb``: the most an image's pixels may take decoded;
    ``max_k``: neighbours a similarity request may ask for; ``max_cost``: forward passes one request may
    cost (:func:`request_cost`); ``max_queue``: images that may wait for a forward pass; ``deadline_s``:
    the longest a request may wait and compute; ``max_client_queue``: images one client address may have
    waiting (None: a quarter of ``max_queue``, at least ``max_images``). The connection limits
    (``max_header_kb``, ``header_timeout_s``, ``keep_alive_s``, ``max_connections``, and
    ``max_client_connections``, None for a quarter of ``max_connections``) are uvicorn's
    (:mod:`attnscope.serve.protocol`).
    """

    max_batch: int = 32
    max_wait_ms: float = 5.0
    batching: bool = True
    token: str | None = None
    cors: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    max_upload_mb: float = 20.0
    body_timeout_s: float = 30.0
    max_images: int = 16
    max_decoded_mb: float = 128.0
    max_k: int = 50
    max_cost: int = 400
    max_queue: int = 64
    deadline_s: float = 60.0
    max_header_kb: int = 16
    header_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    max_connections: int = 64
    max_client_connections: int | None = None
    max_client_queue: int | None = None

    def check(self) -> None:
        """Refuse a value no server could use, naming its flag."""
        for flag, value, low, high, integer in (
            ("--max-batch", self.max_batch, 1, 4096, True),
            ("--max-wait-ms", self.max_wait_ms, 0, 1000, False),
            ("--max-upload-mb", self.max_upload_mb, 0.001, 10_000, False),
            ("--body-timeout", self.body_timeout_s, 0.1, 3600, False),
            ("--max-images", self.max_images, 1, 4096, True),
            ("--max-decoded-mb", self.max_decoded_mb, 1, 100_000, False),
            ("--max-cost", self.max_cost, 1, 10**9, True),
            ("--max-queue", self.max_queue, 1, 10**6, True),
            ("--deadline", self.deadline_s, 0.1, 86_400, False),
            ("--max-header-kb", self.max_header_kb, 1, 1024, True),
            ("--header-timeout", self.header_timeout_s, 0.1, 3600, False),
            ("--keep-alive", self.keep_alive_s, 0, 3600, False),
            ("--max-connections", self.max_connections, 1, 100_000, True),
        ):
            _check_range(flag, value, low, high, integer)
        if self.max_queue < self.max_images:
            raise ConfigError(f"--max-queue={self.max_queue} must be at least --max-images={self.max_images}")
        _check_range("--max-client-connections", self.client_connections(), 1, self.max_connections, True)
        _check_range("--max-client-queue", self.client_queue(), self.max_images, self.max_queue, True)
        if self.token is not None and len(self.token) < 16:
            raise ConfigError(
                "--token must be at least 16 characters; make one with Python's secrets.token_urlsafe() "
                "or `openssl rand -base64 24`"
            )

    def client_connections(self) -> int:
        """Connections one client address may hold at once."""
        given = self.max_client_connections
        return max(self.max_connections // 4, 1) if given is None else given

    def client_queue(self) -> int:
        """Images one client address may have waiting: at least one request of the most images allowed."""
        given = self.max_client_queue
        return max(self.max_queue // 4, self.max_images) if given is None else given

    def hosts(self) -> tuple[str, ...]:
        return tuple(host.lower() for host in self.allowed_hosts) or LOOPBACK_HOSTS


def _check_range(flag: str, value: Any, low: float, high: float, integer: bool) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or (integer and not isinstance(value, int)) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{flag}={value!r} must be {kind} from {low:g} to {high:g}")


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


def _client_name(upload: UploadFile, number: int) -> str:
    """The upload's own file name, without any folder, shortened: only ever shown, never used as a path."""
    name = PurePath((upload.filename or "").replace("\\", "/")).name
    name = "".join(ch for ch in name if ch.isprintable())[:NAME_LENGTH]
    return name or f"image {number}"


def create_app(service: ModelService, options: ServeOptions | None = None) -> FastAPI:
    """The app serving ``service``; inference runs in the batcher's thread, started with the app."""
    options = options or ServeOptions()
    options.check()
    metrics_box: list[ServerMetrics] = []
    shares = Shares(options.max_queue, options.client_queue(), options.max_cost, _cost_per_image)
    batcher = DynamicBatcher(
        _batch_runner(service),
        options.max_batch,
        options.max_wait_ms,
        options.batching,
        shares,
        on_batch=lambda size: metrics_box[0].batch(size),
    )
    metrics = ServerMetrics(lambda: batcher.queued)
    metrics_box.append(metrics)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        limit_arenas()  # the decoding threads would each keep the peak of their own decodes
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
    app.state.batcher, app.state.service, app.state.metrics = batcher, service, metrics
    _add_error_handlers(app)
    _Api(service, batcher, options, metrics).register(app)
    app.add_middleware(CountArrivals, batcher=batcher)
    max_body = int(options.max_upload_mb * 1e6)
    rules = GuardRules(
        options.hosts(), options.cors, options.token, max_body, options.body_timeout_s, PENDING_BODIES * max_body
    )
    app.add_middleware(RequestGuard, rules=rules)
    if options.cors:  # outside the guard, so that a page of that origin can read a refusal's message
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=[options.cors], allow_methods=["GET", "POST"], allow_headers=["Authorization"]
        )
    app.add_middleware(AccessLog, observe=metrics.observe)
    return app


Decode = Callable[[Upload, int], np.ndarray]


def _decoded_then_given_back(decode: Decode, upload: Upload, byte_limit: int) -> np.ndarray:
    """``decode(upload, byte_limit)``, then the heap memory it freed returned to the system (a large decode would
    otherwise stay resident in its thread's heap)."""
    try:
        return decode(upload, byte_limit)
    finally:
        give_back()


def _cost_per_image(key: Hashable) -> int:
    """What one image of a batcher key costs: ``("explain", method)`` its method's maps, anything else one pass."""
    assert isinstance(key, tuple)
    return request_cost(key[1] if key[0] == "explain" else None, 1)


def _batch_runner(service: ModelService) -> Callable[[Hashable, list[Any]], list[Any]]:
    def run(key: Hashable, images: list[Any]) -> list[Any]:
        assert isinstance(key, tuple)
        if key[0] == "predict":
            return service.predict(images)
        if key[0] == "explain":
            return service.explain(images, key[1], key[2])
        return service.similar(images, key[1])

    return run


def _add_error_handlers(app: FastAPI) -> None:
    """Every failure as ``{"error": message}``: the input's with a 4xx status, the server's as a bare 500."""

    @app.exception_handler(DataError)
    async def bad_image(_request: Request, error: DataError) -> JSONResponse:
        return refusal(422, str(error))

    @app.exception_handler(RetrievalError)
    async def no_index(_request: Request, error: RetrievalError) -> JSONResponse:
        return refusal(404, str(error))

    @app.exception_handler(ServerBusy)
    async def busy(_request: Request, error: ServerBusy) -> JSONResponse:
        return refusal(503, str(error), headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(AttnscopeError)
    async def bad_option(_request: Request, error: AttnscopeError) -> JSONResponse:
        return refusal(400, str(error))

    @app.exception_handler(HTTPException)  # FastAPI's and Starlette's own: 404, 405, a malformed multipart body
    async def http_error(_request: Request, error: HTTPException) -> JSONResponse:
        return refusal(error.status_code, str(error.detail), dict(error.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem.get('loc', ())[1:]) or 'request'}: {problem.get('msg')}"
            for problem in error.errors()
        )
        return refusal(422, problems or "the request is not valid")

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=error)
        return refusal(500, "the server failed on this request; its log says why")


class _Api:
    """The routes, as methods over the service, the batcher and the options (registered by :meth:`register`)."""

    def __init__(
        self, service: ModelService, batcher: DynamicBatcher, options: ServeOptions, metrics: ServerMetrics
    ) -> None:
        self.service, self.batcher, self.options, self.metrics = service, batcher, options, metrics
        self.limiter = anyio.CapacityLimiter(DECODING_THREADS)
        self.budget = ByteBudget(int(DECODING_BUDGET * options.max_decoded_mb * 1e6))
        self.page = resources.files("attnscope.serve").joinpath("page.html").read_text(encoding="utf-8")

    def register(self, app: FastAPI) -> None:
        app.add_api_route("/", self.viewer, methods=["GET"], response_class=HTMLResponse, include_in_schema=False)
        app.add_api_route("/healthz", self.health, methods=["GET"])
        app.add_api_route("/metrics", self.scrape, methods=["GET"], include_in_schema=False)
        app.add_api_route("/v1/model", self.model_card, methods=["GET"])
        for path, endpoint in (("predict", self.predict), ("explain", self.explain), ("similar", self.similar)):
            app.add_api_route(f"/v1/{path}", endpoint, methods=["POST"])

    async def decoded(
        self, request: Request, images: list[UploadFile], method: str | None = None
    ) -> tuple[list[str], list[np.ndarray]]:
        """The client's names and the decoded pixels of the uploads, once the request is within its limits
        (images, cost); decoded in threads, at most four at once."""
        request.state.images = len(images)
        if len(images) > self.options.max_images:
            raise HTTPException(413, f"{len(images)} images in one request; the limit is {self.options.max_images}")
        cost = request_cost(method, len(images))
        if cost > self.options.max_cost:
            raise ConfigError(
                f"{len(images)} image(s) with {method} cost about {cost} forward passes; this server allows "
                f"{self.options.max_cost} per request (--max-cost): send fewer images, or choose a lighter method"
            )
        names = [_client_name(upload, number) for number, upload in enumerate(images, 1)]
        byte_limit = int(self.options.max_decoded_mb * 1e6)
        arrays = []
        for name, upload in zip(names, images, strict=True):
            data = await upload.read()
            working = decoding_memory(data, byte_limit)
            async with self.budget.hold(working):
                decode: Decode = self.service.decode
                if working > LARGE_DECODE:
                    decode = functools.partial(_decoded_then_given_back, decode)
                arrays.append(
                    await anyio.to_thread.run_sync(decode, Upload(name, data), byte_limit, limiter=self.limiter)
                )
        return names, arrays

    async def computed(self, request: Request, key: tuple, arrays: list[np.ndarray]) -> list[Any]:
        """The batcher's results for ``arrays``; cancelled when the client leaves or the deadline passes (504)."""
        client = request.client.host if request.client else None
        job = asyncio.ensure_future(self.batcher.submit(key, arrays, client))

        async def watch() -> None:
            while not await request.is_disconnected():
                await asyncio.sleep(DISCONNECT_POLL_S)
            job.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            return await asyncio.wait_for(job, self.options.deadline_s)
        except TimeoutError:
            raise HTTPException(
                504, f"the request was not answered within {self.options.deadline_s:g} s (--deadline); it was cancelled"
            ) from None
        except asyncio.CancelledError:
            if watcher.done() and not watcher.cancelled():  # the watcher cancelled the job: its client left
                raise HTTPException(499, "the client went away; the request was cancelled") from None
            raise
        finally:
            watcher.cancel()

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

    async def scrape(self) -> Response:
        """Prometheus's text format: requests, latencies, images per request, batch sizes, queue depth."""
        body, content_type = self.metrics.exposition()
        return Response(body, media_type=content_type)

    async def model_card(self) -> dict[str, Any]:
        """The run, its classes, threshold and test metrics, the index, the limits and the batching so far."""
        stats, options = self.batcher.stats, self.options
        serving: dict[str, Any] = {
            "batching": options.batching,
            "max_batch": options.max_batch,
            "max_images": options.max_images,
        }
        serving |= {"max_cost": options.max_cost, "map_costs": MAP_COST, "deadline_s": options.deadline_s}
        serving |= {"batches": stats.batches, "images": stats.items, "largest_batch": stats.largest}
        return {**self.service.card(), "serving": serving}

    async def predict(
        self, request: Request, images: Annotated[list[UploadFile], File(description="one or more images")]
    ) -> JSONResponse:
        """Every class's probability and the decision at the run's validation threshold, per image."""
        names, arrays = await self.decoded(request, images)
        results = await self.computed(request, ("predict",), arrays)
        service = self.service
        return self.answer(names, results, threshold=service.run.threshold, operating_point=service.operating_point())

    async def explain(
        self,
        request: Request,
        images: Annotated[list[UploadFile], File(description="one or more images")],
        method: Annotated[str, Form(description="the CAM method shown beside the attention")] = "gradcam",
        target: Annotated[
            str | None, Form(description="the class (finding) whose map is drawn, by name or index; default: predicted")
        ] = None,
    ) -> JSONResponse:
        """Every attention tap and ``method``'s CAM of the predicted class, or of ``target``: heat map and overlay
        PNGs, raw values."""
        check_cam_method(method)
        chosen = None if target in (None, "") else resolve_targets(self.service.run, target)
        if chosen is not None and len(chosen) != 1:
            raise ConfigError("target=all draws a map per class: ask for one class per request")
        names, arrays = await self.decoded(request, images, method)
        results = await self.computed(request, ("explain", method, None if chosen is None else chosen[0]), arrays)
        return self.answer(names, results, normalisation=RAW_NOTE)

    async def similar(
        self,
        request: Request,
        images: Annotated[list[UploadFile], File(description="one or more images")],
        k: Annotated[int, Form(description="how many similar cases")] = 8,
    ) -> JSONResponse:
        """The ``k`` most similar indexed cases of each image, with their labels and thumbnails."""
        self.service.require_index()  # before the uploads are decoded
        if not 1 <= k <= self.options.max_k:
            raise ConfigError(f"k={k} must lie between 1 and {self.options.max_k}")
        names, arrays = await self.decoded(request, images)
        return self.answer(names, await self.computed(request, ("similar", k), arrays))


# the page runs its own inline script and shows data: images; it loads nothing from anywhere else
CONTENT_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
