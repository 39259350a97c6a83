"""Attacks on ``attnscope serve``: does a small prediction still come back in time while the server is under each?

    python -m benchmarks.serve_attacks                 # a 1-epoch demo run; every attack for 10 s
    python -m benchmarks.serve_attacks --seconds 3 --attacks slow_head,flood
    python -m benchmarks.serve_attacks --out benchmarks/results/serve_attacks-cpu.jsonl
    python -m benchmarks.serve_attacks --table benchmarks/results/serve_attacks-cpu.jsonl

One server (``attnscope serve RUN``, its default limits, on 127.0.0.1) faces each
attack in turn from the address 127.0.0.1, while a user at 127.0.0.2 (a process of
its own) sends one small ``POST /v1/predict`` (one 80 px PNG) every 0.1 s and
times the answer. The attacks:

- ``slow_head``: 100 connections, each sending its request head a byte a second;
- ``slow_body``: 100 connections announcing a 19 MB upload and sending it 1 KB a second;
- ``large_head``: 8 clients sending heads of 1 MB, and of 10,000 short headers, over and over;
- ``big_bodies``: 16 clients posting 19 MB uploads that are not images, over and over;
- ``rebinding``: 8 clients posting 19 MB bodies with ``Host: attacker.example`` or a foreign ``Origin``;
- ``bombs``: 8 clients uploading images that are small on the wire and huge decoded (a 16-bit PNG of
  12,000 x 12,000 zeros, a float TIFF, a PNG header claiming 100,000 x 100,000 pixels, an 8-bit PNG
  just under the decoded-size limit);
- ``costly``: 8 clients asking for occlusion, integrated-gradients and Score-CAM maps;
- ``flood``: 64 clients posting 16 images each, as fast as the server answers.

Every attacking request ends one of four ways: ``held`` (answered 200, as any request within the
limits is), ``refused`` (an error status, or the connection closed by the server), ``stalled``
(neither, within the attack's time plus the server's longest limit), ``crashed`` (the server
process ended). Beside the counts: the user's latency (p50, p99, max, failures) and the server's
peak resident memory during the attack. Done when, under each attack, the user's p99 is under 1 s
with no failure and the peak memory under 1 GB.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import add_result_arguments, append_records, choose, print_table, provenance, run_facts
from benchmarks.serve import Server, demo_run, payloads

ATTACKER, USER = "127.0.0.1", "127.0.0.2"
OUTCOMES = ("held", "refused", "stalled", "crashed")
UPLOAD_MB = 19  # just under the server's default --max-upload-mb
HEADER_TIMEOUT_S, BODY_TIMEOUT_S = 10, 30  # the server's defaults, which a slow client must be cut off by
GRACE_S = 5
DEFAULT_SECONDS = 10.0
ATTACK_NAMES = ("slow_head", "slow_body", "large_head", "big_bodies", "rebinding", "bombs", "costly", "flood")


# --- HTTP by hand: the attacks send what no client library would -----------------------------------------


def multipart(files: list[tuple[str, bytes]], fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with ``files`` under the name ``images``, and its content type."""
    boundary = "attnscope-attack-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        for key, value in (fields or {}).items()
    ]
    for name, data in files:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{name}"\r\n'
        parts.append(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def request_head(path: str, length: int, content_type: str, extra: str = "", host: str = "127.0.0.1") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n{extra}\r\n"
    ).encode()


async def read_status(reader: asyncio.StreamReader) -> int:
    """The status of the response on ``reader``, its body read; 0 when the server closed without one."""
    line = await reader.readline()
    if not line.startswith(b"HTTP/"):
        return 0
    await reader.read()  # every request here says Connection: close
    return int(line.split()[1])


async def send_request(port: int, head: bytes, body: bytes, timeout: float) -> str:
    """Send a whole request from the attacker's address: ``held`` on a 200, ``refused`` on any other answer or a
    close, ``stalled`` when nothing happens within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(ATTACKER, 0))
            try:
                writer.write(head + body)
                await writer.drain()
                status = await read_status(reader)
            finally:
                writer.close()
    except TimeoutError:
        return "stalled"
    except OSError:  # reset or broken pipe: the server closed it
        return "refused"
    return "held" if status == 200 else "refused"


async def trickle(port: int, head: bytes, chunk: bytes, every_s: float, limit_s: float) -> str:
    """Send ``head``, then ``chunk`` every ``every_s`` seconds: ``refused`` once the server answers or closes,
    ``stalled`` when it still listens after ``limit_s``."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(ATTACKER, 0))
    except OSError:
        return "refused"
    started = time.monotonic()
    try:
        writer.write(head)
        while time.monotonic() - started < limit_s:
            try:
                line = await asyncio.wait_for(reader.readline(), every_s)
            except TimeoutError:
                writer.write(chunk)
                await writer.drain()
                continue
            return "held" if line.startswith(b"HTTP/1.1 200") else "refused"  # an answer, or b"" at a close
        return "stalled"
    except OSError:
        return "refused"
    finally:
        writer.close()


# --- the attacks ------------------------------------------------------------------------------------------


@dataclass
class Attack:
    """``clients`` coroutines ``one(port, number)``, each run over and over for the attack's time (``repeat``) or
    once (a slow client, which lasts as long as the server lets it)."""

    name: str
    clients: int
    one: Callable[[int, int], Awaitable[str]]
    repeat: bool = True


def image_bytes(array: np.ndarray, fmt: str, **options) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def claimed_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with a few bytes of data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


def bombs() -> list[bytes]:
    """Images small on the wire and large decoded; each under the upload limit."""
    sixteen = image_bytes(np.zeros((12_000, 12_000), np.uint16), "PNG")
    floats = image_bytes(np.zeros((4_000, 4_000), np.float32), "TIFF", compression="tiff_adobe_deflate")
    near_limit = image_bytes(np.zeros((6_400, 6_400, 3), np.uint8), "PNG")  # 123 MB decoded, under 128 MB
    return [sixteen, floats, claimed_png(100_000, 100_000), near_limit]


def attacks(user_image: bytes) -> dict[str, Attack]:
    upload = b"\0" * (UPLOAD_MB * 1_000_000)
    trickle_head = b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
    body_head = request_head("/v1/predict", len(upload), "multipart/form-data; boundary=x")
    long_header = request_head("/v1/predict", 0, "text/plain", "X-Big: " + "a" * 1_000_000 + "\r\n")
    many_headers = request_head("/v1/predict", 0, "text/plain", "".join(f"X-{n}: a\r\n" for n in range(10_000)))
    bomb_files = bombs()
    flood_body, flood_type = multipart([(f"{n}.png", user_image) for n in range(16)])
    costly = [
        multipart([("a.png", user_image)], {"method": "occlusion"}),
        multipart([(f"{n}.png", user_image) for n in range(4)], {"method": "integrated_gradients"}),
        multipart([("a.png", user_image)], {"method": "scorecam"}),
    ]

    def slow_head(port: int, number: int) -> Awaitable[str]:
        return trickle(port, trickle_head, b"a", 1.0, HEADER_TIMEOUT_S + GRACE_S)

    def slow_body(port: int, number: int) -> Awaitable[str]:
        return trickle(port, body_head, b"\0" * 1000, 1.0, BODY_TIMEOUT_S + GRACE_S)

    def large_head(port: int, number: int) -> Awaitable[str]:
        return send_request(port, long_header if number % 2 else many_headers, b"", 30)

    junk_body, junk_type = multipart([("junk.png", np.random.default_rng(0).bytes(UPLOAD_MB * 1_000_000 - 1000))])

    def big_body(port: int, number: int) -> Awaitable[str]:
        return send_request(port, request_head("/v1/predict", len(junk_body), junk_type), junk_body, 60)

    def rebinding(port: int, number: int) -> Awaitable[str]:
        body, kind = multipart([("a.png", upload)])
        if number % 2:
            return send_request(port, request_head("/v1/explain", len(body), kind, host="attacker.example"), body, 30)
        foreign = "Origin: https://evil.example\r\n"
        return send_request(port, request_head("/v1/explain", len(body), kind, foreign), body, 30)

    def bomb(port: int, number: int) -> Awaitable[str]:
        body, kind = multipart([("bomb.png", bomb_files[number % len(bomb_files)])])
        return send_request(port, request_head("/v1/predict", len(body), kind), body, 60)

    def expensive(port: int, number: int) -> Awaitable[str]:
        body, kind = costly[number % len(costly)]
        return send_request(port, request_head("/v1/explain", len(body), kind), body, 90)

    def flood(port: int, number: int) -> Awaitable[str]:
        return send_request(port, request_head("/v1/predict", len(flood_body), flood_type), flood_body, 90)

    return {
        attack.name: attack
        for attack in (
            Attack("slow_head", 100, slow_head, repeat=False),
            Attack("slow_body", 100, slow_body, repeat=False),
            Attack("large_head", 8, large_head),
            Attack("big_bodies", 16, big_body),
            Attack("rebinding", 8, rebinding),
            Attack("bombs", 8, bomb),
            Attack("costly", 8, expensive),
            Attack("flood", 64, flood),
        )
    }


async def run_attack(attack: Attack, port: int, seconds: float) -> Counter:
    """Every client's outcomes, the repeating ones stopped after ``seconds`` (their last request finishes)."""
    outcomes: Counter = Counter()
    stop = time.monotonic() + seconds

    async def client(number: int) -> None:
        while True:
            outcomes[await attack.one(port, number)] += 1
            number += attack.clients
            if not attack.repeat or time.monotonic() > stop:
                return

    await asyncio.gather(*(client(n) for n in range(attack.clients)))
    return outcomes


# --- the user, and the server's memory --------------------------------------------------------------------


def user(port: int, image: bytes, stop: multiprocessing.synchronize.Event, results: multiprocessing.Queue) -> None:
    """In a process of its own: one small prediction every 0.1 s until ``stop``; puts (seconds, status) pairs."""
    import socket

    body, kind = multipart([("user.png", image)])
    request = request_head("/v1/predict", len(body), kind) + body
    timings = []
    while not stop.is_set():
        started = time.perf_counter()
        status = 0
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(USER, 0)) as connection:
                connection.sendall(request)
                answer = b""
                while chunk := connection.recv(65536):
                    answer += chunk
                status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
        except OSError:
            pass
        seconds = time.perf_counter() - started
        timings.append((seconds, status))
        time.sleep(max(0.1 - seconds, 0))
    results.put(timings)


class PeakMemory:
    """The largest resident memory of process ``pid`` seen while the ``with`` block runs, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_mb = pid, 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.05):
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    self.peak_mb = max(self.peak_mb, int(line.split()[1]) / 1024)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


def under_attack(server: Server, attack: Attack, image: bytes, seconds: float) -> dict:
    """One attack's record: the attacker's outcomes, the user's latencies, the server's peak memory."""
    context = multiprocessing.get_context("spawn")
    stop, results = context.Event(), context.Queue()
    probe = context.Process(target=user, args=(server.port, image, stop, results))
    with PeakMemory(server.process.pid) as memory:
        probe.start()
        time.sleep(0.5)  # the user's first requests before the attack
        outcomes = asyncio.run(run_attack(attack, server.port, seconds))
        stop.set()
        timings = results.get(timeout=120)
        probe.join()
    if server.process.poll() is not None:
        outcomes["crashed"] += 1
    latencies = np.asarray([seconds for seconds, _ in timings]) * 1000
    return {
        "attack": attack.name,
        "clients": attack.clients,
        **{outcome: outcomes.get(outcome, 0) for outcome in OUTCOMES},
        "user_requests": len(timings),
        "user_failures": sum(status != 200 for _, status in timings),
        "user_p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "user_p99_ms": round(float(np.percentile(latencies, 99)), 1),
        "user_max_ms": round(float(latencies.max()), 1),
        "peak_rss_mb": round(memory.peak_mb, 1),
    }


def measure(run: Path | None, chosen: list[str], seconds: float) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="attnscope-attacks-") as scratch:
        folder = Path(scratch)
        run = run or demo_run(folder)
        image = payloads(1)[0]
        plan = attacks(image)
        records = []
        server = Server(run, True, folder / "server.log")
        try:
            server.wait()
            for name in chosen:
                if server.process.poll() is not None:
                    records.append({"attack": name, **dict.fromkeys(OUTCOMES, 0), "crashed": 1})
                    continue
                records.append(under_attack(server, plan[name], image, seconds))
        finally:
            server.stop()
    facts = {"run": run.name, "seconds": seconds, **run_facts()}
    return [{**record, **facts} for record in records]


def markdown(records: list[dict]) -> str:
    """The table of the last run recorded (one record per attack)."""
    last = records[-len({r["attack"] for r in records}) :]
    lines = [
        "| attack | clients | held | refused | stalled | crashed | user p50 ms | user p99 ms | user failures "
        "| peak memory MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in last:
        lines.append(
            f"| {r['attack']} | {r['clients']} | {r['held']} | {r['refused']} | {r['stalled']} | {r['crashed']} "
            f"| {r['user_p50_ms']:.0f} | {r['user_p99_ms']:.0f} | {r['user_failures']} of {r['user_requests']} "
            f"| {r['peak_rss_mb']:.0f} |"
        )
    bf16 = "with" if last[0].get("native_bf16") else "without"
    return (
        "\n".join(lines)
        + f"\n\nEach attack for {last[0]['seconds']:g} s from 127.0.0.1 (slow clients for as long as the server "
        f"lets them), while a user at 127.0.0.2 sends one 80 px PNG to `POST /v1/predict` every 0.1 s; attacker, "
        f"user and server share the CPU {bf16} native bf16. " + provenance(last)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="the run to serve (default: one epoch of the demo model, trained here)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=DEFAULT_SECONDS,
        help=f"how long each attack lasts (default {DEFAULT_SECONDS:g})",
    )
    parser.add_argument("--attacks", default="all", help="comma-separated attack names (default: all)")
    add_result_arguments(parser)
    args = parser.parse_args()
    if print_table(args.table, markdown):
        return
    chosen = list(ATTACK_NAMES) if args.attacks == "all" else choose(parser, args.attacks, ATTACK_NAMES, "attack")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    records = measure(Path(args.run) if args.run else None, chosen, args.seconds)
    append_records(args.out, records)
    print("\n".join(json.dumps(r) for r in records))


if __name__ == "__main__":
    main()
