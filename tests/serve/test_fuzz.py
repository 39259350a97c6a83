"""A bounded fuzz of the server on 127.0.0.1: generated raw requests (methods, paths, headers, bodies, broken
framing) each get a well-formed answer in the API's one error shape, or a closed connection; never a 500, a hang
or a server that stops answering."""

import json
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnscope.serve.app import ServeOptions, create_app
from tests.serve.conftest import png_bytes
from tests.serve.server import BackgroundServer

pytestmark = pytest.mark.e2e

TOKEN_CHARS = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"), min_size=1)
HEADER_VALUE = st.binary(max_size=200).map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b""))


@st.composite
def raw_requests(draw) -> bytes:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD", "PATCH"]) | TOKEN_CHARS)
    path = draw(
        st.sampled_from(["/", "/healthz", "/metrics", "/v1/model", "/v1/predict", "/v1/explain", "/v1/similar"])
        | st.text(max_size=60).map(lambda text: "/" + text.replace(" ", "%20").replace("\r", "").replace("\n", ""))
    )
    host = draw(st.sampled_from(["127.0.0.1", "localhost", "attacker.example", ""]))
    headers = [(b"Host", host.encode())]
    headers += draw(st.lists(st.tuples(TOKEN_CHARS.map(str.encode), HEADER_VALUE), max_size=6))
    body = draw(
        st.sampled_from([b"", png_bytes(0)])
        | st.binary(max_size=2000)
        | st.just(b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n\r\n')
    )
    framing = draw(st.sampled_from(["length", "chunked", "none", "lie"]))
    if framing == "length":
        headers.append((b"Content-Length", str(len(body)).encode()))
    elif framing == "lie":
        headers.append((b"Content-Length", str(len(body) + draw(st.integers(-5, 5))).encode()))
    if draw(st.booleans()):
        headers.append((b"Content-Type", b"multipart/form-data; boundary=b"))
    head = f"{method} {path} HTTP/1.1\r\n".encode(errors="replace")
    head += b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"Connection: close\r\n\r\n"
    if framing == "chunked":
        return head.replace(b"Connection: close", b"Transfer-Encoding: chunked\r\nConnection: close") + (
            f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
        )
    return head + body


def exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)  # a body shorter than it claims ends here, not at a timeout
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            return b""
    return b"".join(chunks)


def check_answer(answer: bytes) -> None:
    if not answer:  # closed without an answer: allowed for a request h11 cannot read
        return
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert status != 500 and 200 <= status < 600, answer[:300]
    if status >= 400 and body:  # a HEAD request's answer has none
        assert b"content-type: application/json" in head.lower(), answer[:300]
        assert set(json.loads(body)) == {"error"}, body[:300]


@pytest.fixture(scope="module")
def fuzzed_server(service):
    options = ServeOptions(body_timeout_s=2, header_timeout_s=2)
    with BackgroundServer(create_app(service, options), options) as url:
        yield int(url.rsplit(":", 1)[1])


@settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=raw_requests())
def test_every_generated_request_gets_a_clear_answer_or_a_close(fuzzed_server, request):
    check_answer(exchange(fuzzed_server, request))
    health = exchange(fuzzed_server, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert health.startswith(b"HTTP/1.1 200")
