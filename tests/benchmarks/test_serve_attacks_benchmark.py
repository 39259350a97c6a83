"""The attack benchmark's harness: it must tell a held request from a refused or stalled one, and its bombs must
be what they claim."""

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from attnscope.data.decode import decode_image_bytes
from attnscope.errors import DataError
from benchmarks import serve_attacks


async def _with_server(answer: bytes | None, exercise):
    """A server on 127.0.0.1 that reads a request and sends ``answer`` (None: says nothing, keeps listening)."""

    async def handle(reader, writer):
        await reader.read(100)
        if answer is None:
            await asyncio.sleep(5)
        else:
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        return await exercise(port)


@pytest.mark.parametrize(
    "answer, outcome",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", "held"),
        (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", "refused"),
        (b"", "refused"),  # closed without an answer
        (None, "stalled"),
    ],
)
def test_a_request_is_told_held_refused_or_stalled(answer, outcome):
    head = serve_attacks.request_head("/v1/predict", 3, "text/plain")
    result = asyncio.run(_with_server(answer, lambda port: serve_attacks.send_request(port, head, b"abc", 0.5)))
    assert result == outcome


def test_a_trickling_client_is_stalled_only_while_the_server_listens():
    head = b"POST / HTTP/1.1\r\n"
    refused = asyncio.run(_with_server(b"", lambda port: serve_attacks.trickle(port, head, b"a", 0.05, 2)))
    stalled = asyncio.run(_with_server(None, lambda port: serve_attacks.trickle(port, head, b"a", 0.05, 0.3)))
    assert (refused, stalled) == ("refused", "stalled")


def test_the_bombs_are_small_on_the_wire_and_large_decoded():
    sixteen, floats, claimed, near_limit = serve_attacks.bombs()
    assert max(len(sixteen), len(floats), len(claimed), len(near_limit)) < 1_000_000
    with Image.open(io.BytesIO(near_limit)) as image:
        assert image.size == (6400, 6400) and image.mode == "RGB"  # 123 MB decoded, under the 128 MB default
    with pytest.raises(DataError, match="too many pixels"):
        decode_image_bytes(claimed, "claimed.png", 32)
    assert Image.open(io.BytesIO(floats)).mode == "F"


def test_the_table_has_a_row_per_attack_of_the_last_run():
    record = {name: 0 for name in serve_attacks.OUTCOMES} | {"clients": 8, "user_requests": 10, "user_failures": 0}
    record |= {"user_p50_ms": 10.0, "user_p99_ms": 20.0, "peak_rss_mb": 400.0, "seconds": 10, "date": "2026-12-06"}
    records = [record | {"attack": name} for name in ("slow_head", "flood")]
    table = serve_attacks.markdown(records)
    assert "| slow_head | 8 | 0 | 0 | 0 | 0 | 10 | 20 | 0 of 10 | 400 |" in table and "| flood |" in table


def test_the_multipart_body_holds_each_file_and_field():
    body, kind = serve_attacks.multipart([("a.png", b"\x89PNG")], {"method": "occlusion"})
    boundary = kind.split("boundary=")[1]
    assert body.count(f"--{boundary}\r\n".encode()) == 2 and body.endswith(f"--{boundary}--\r\n".encode())
    assert b'name="method"\r\n\r\nocclusion' in body and b'filename="a.png"' in body
    assert np.frombuffer(body, np.uint8).size == len(body)
