"""What ``GET /metrics`` says, in Prometheus's text format (prometheus-client).

Each app has its own registry (two servers in one process, or the tests' many
apps, never mix their counts): requests by route and status, their latency,
images per request, the batches the batcher ran and their sizes, and the images
waiting in its queue at the moment of the scrape.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

ROUTES = ("/", "/healthz", "/metrics", "/v1/model", "/v1/predict", "/v1/explain", "/v1/similar")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    """The server's counters; :meth:`observe` takes one finished request, :meth:`batch` one batch run."""

    def __init__(self, queue_depth: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "attnscope_requests",
            "Requests answered, by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "attnscope_request_seconds",
            "Time from a request's arrival to its answer",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.images = Histogram(
            "attnscope_request_images",
            "Images per API request",
            ["route"],
            buckets=SIZE_BUCKETS,
            registry=self.registry,
        )
        self.batches = Histogram(
            "attnscope_batch_images",
            "Images per forward pass the batcher ran",
            buckets=SIZE_BUCKETS,
            registry=self.registry,
        )
        queue = Gauge("attnscope_queue_images", "Images waiting for a forward pass", registry=self.registry)
        queue.set_function(queue_depth)

    def observe(self, method: str, path: str, status: int, seconds: float, images: int) -> None:
        route = path if path in ROUTES else "other"  # a scanner's paths must not make a series each
        self.requests.labels(method if method in ("GET", "POST") else "other", route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if images:
            self.images.labels(route).observe(images)

    def batch(self, size: int) -> None:
        self.batches.observe(size)

    def exposition(self) -> tuple[bytes, str]:
        """The text of a scrape and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
