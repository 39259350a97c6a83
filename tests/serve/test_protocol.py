"""The connection limits on a real uvicorn server, tried with raw sockets on 127.0.0.1: a huge head, a head
or a body that trickles in, and a client that leaves before its request is computed."""

import socket
import threading
import time

import pytest

from attnscope.serve.app import ServeOptions, create_app
from tests.serve.conftest import png_bytes
from tests.serve.server import BackgroundServer

pytestmark = pytest.mark.e2e


def connect(url: str) -> socket.socket:
    port = int(url.rsplit(":", 1)[1])
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def multipart(payload: bytes, boundary: str = "b0undary") -> tuple[bytes, str]:
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def test_a_head_over_the_limit_is_refused_and_the_server_goes_on(service):
    options = ServeOptions(max_header_kb=16)
    with BackgroundServer(create_app(service, options), options) as url, connect(url) as sock:
        started = time.monotonic()
        try:  # the server may refuse and close while the head is still being sent
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Flood: " + b"a" * 200_000 + b"\r\n\r\n")
            answer = read_all(sock)
        except (ConnectionResetError, BrokenPipeError):
            answer = b"HTTP/1.1 4xx (reset)"
        assert answer.startswith(b"HTTP/1.1 4") and time.monotonic() - started < 5
        with connect(url) as other:
            other.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert read_all(other).startswith(b"HTTP/1.1 200")


def test_a_head_that_trickles_in_is_cut_off(service):
    options = ServeOptions(header_timeout_s=0.5)
    with BackgroundServer(create_app(service, options), options) as url, connect(url) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: local")
        time.sleep(0.2)
        sock.sendall(b"host\r\nX-Slow: 1\r\n")  # more bytes do not reset the deadline
        assert read_all(sock) == b"" and 0.4 < time.monotonic() - started < 5  # closed by the server
    with BackgroundServer(create_app(service, options), options) as url, connect(url) as idle:
        started = time.monotonic()
        assert read_all(idle) == b"" and time.monotonic() - started < 5  # a connection that never says a word


def test_a_body_that_trickles_in_is_answered_408(service):
    options = ServeOptions(body_timeout_s=0.5)
    body, content_type = multipart(png_bytes(1))
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with BackgroundServer(create_app(service, options), options) as url, connect(url) as sock:
        sock.sendall(head + body[:10])
        started = time.monotonic()
        answer = read_all(sock)
        assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 5
        assert b'"error":"the request body did not arrive within 0.5 s (--body-timeout)"' in answer


def test_a_request_whose_client_left_is_never_computed(service, monkeypatch):
    computed, started = [], threading.Event()
    predict = service.predict

    def slowly(images):
        started.set()
        computed.append(len(images))
        time.sleep(1.0)
        return predict(images)

    monkeypatch.setattr(service, "predict", slowly)
    app = create_app(service, ServeOptions(batching=False))
    with BackgroundServer(app) as url:

        def request(images: int) -> socket.socket:
            body, content_type = multipart(png_bytes(images, (32 + images, 32)))
            sock = connect(url)
            sock.sendall(
                f"POST /v1/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            return sock

        first = request(1)
        assert started.wait(10)  # computing for a second
        leaving = request(2)
        deadline = time.monotonic() + 10
        while app.state.batcher.queued < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        leaving.close()  # gone while waiting behind the first
        assert read_all(first).startswith(b"HTTP/1.1 200")
        first.close()
        time.sleep(1.5)
        assert computed == [1] and app.state.batcher.queued == 0


def test_a_large_head_sent_in_one_piece_is_refused_before_it_is_parsed(service):
    # h11 bounds only a head that arrives in several reads; 10,000 short headers fit in one
    options = ServeOptions(max_header_kb=16)
    head = "".join(f"X-{n}: a\r\n" for n in range(10_000)).encode()
    with BackgroundServer(create_app(service, options), options) as url, connect(url) as sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + head + b"\r\n")
            answer = read_all(sock)
        except (ConnectionResetError, BrokenPipeError):
            answer = b"(reset before an answer)"
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert b"--max-header-kb" in answer


def test_one_client_address_holds_only_its_share_of_the_connections(service):
    options = ServeOptions(max_connections=8)  # a quarter, 2, per client address
    with BackgroundServer(create_app(service, options), options) as url:
        port = int(url.rsplit(":", 1)[1])
        held = [connect(url), connect(url)]
        with connect(url) as third:
            answer = read_all(third)
            assert answer.startswith(b"HTTP/1.1 503") and b"--max-client-connections" in answer
            assert b"retry-after: 2" in answer.lower()
        other = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.2", 0))
        with other:  # another client is still served
            other.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert read_all(other).startswith(b"HTTP/1.1 200")
        held.pop().close()
        time.sleep(0.2)
        with connect(url) as again:  # a closed connection gives its place back
            again.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert read_all(again).startswith(b"HTTP/1.1 200")
        for sock in held:
            sock.close()
