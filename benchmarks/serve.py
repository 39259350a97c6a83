"""Serving: requests/s, latency and memory of ``attnscope serve``, with dynamic batching and without.

    python -m benchmarks.serve                                # a 1-epoch run of the demo model, 400 requests a level
    python -m benchmarks.serve --run runs/demo --requests 1000 --memory-requests 10000 \\
        --out benchmarks/results/serve-cpu.jsonl
    python -m benchmarks.serve --table benchmarks/results/serve-cpu.jsonl

Two servers of the same run are started as a user starts them (``attnscope serve``
on 127.0.0.1, one with ``--no-batching``). A client on the same machine sends
``POST /v1/predict`` with one PNG each (80 px generated images, the demo's size on
disk), keeping ``concurrency`` requests in flight, at each level alternately to
the two servers for ``rounds`` rounds (figures are medians over rounds; the
machine is shared, and the client takes its share of the cores). Then the batched
server answers ``memory_requests`` more at the highest level, and its resident
memory is read from /proc before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import add_result_arguments, append_records, print_table, run_facts

SERVERS = ("batched", "unbatched")


def demo_run(folder: Path) -> Path:
    """One epoch of the demo's model and data (400 lesions): what is served matters, not how well it learned."""
    from attnscope.engine.config import load_config
    from attnscope.training.train import train

    settings = [
        f"run_dir={folder / 'run'}",
        "data.source_options={count: 400, size: 80, seed: 0}",
        "trainer.epochs=1",
        "trainer.progress=false",
        "data.progress=false",
    ]
    return Path(train(load_config("demo", settings)).run_dir)


def payloads(count: int) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


class Server:
    """``attnscope serve RUN`` in a process of its own, on a free port."""

    def __init__(self, run: Path, batching: bool, log: Path, options: tuple[str, ...] = ()) -> None:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        command = [sys.executable, "-m", "attnscope", "serve", str(run), "--port", str(self.port)]
        self.log = log
        with open(log, "wb") as handle:
            flags = [*options, *([] if batching else ["--no-batching"])]
            self.process = subprocess.Popen([*command, *flags], stdout=handle, stderr=handle)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float = 120) -> None:
        import httpx2

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server stopped:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx2.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"the server did not answer within {timeout} s")

    def cpu_seconds(self) -> float:
        """User and system CPU time the server process has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise SystemExit("no VmRSS in /proc: the memory figure needs Linux")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def load(server: Server, images: list[bytes], requests: int, concurrency: int) -> dict:
    """:func:`drive` the server, with the CPU time the server and this client spent per request."""
    import resource

    def client_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    server_before, client_before = server.cpu_seconds(), client_cpu()
    measured = asyncio.run(drive(server.url, images, requests, concurrency))
    measured["server_cpu_ms"] = (server.cpu_seconds() - server_before) * 1000 / requests
    measured["client_cpu_ms"] = (client_cpu() - client_before) * 1000 / requests
    return measured


async def drive(url: str, images: list[bytes], requests: int, concurrency: int) -> dict:
    """``requests`` predictions with ``concurrency`` in flight: rate, latency percentiles, errors."""
    import httpx2

    latencies: list[float] = []
    errors = 0
    issued = 0
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(base_url=url, limits=limits, timeout=120) as client:

        async def worker() -> None:
            nonlocal issued, errors
            while issued < requests:
                number = issued
                issued += 1
                files = {"images": (f"{number}.png", images[number % len(images)], "image/png")}
                started = time.perf_counter()
                try:
                    response = await client.post("/v1/predict", files=files)
                    errors += response.status_code != 200
                except httpx2.HTTPError:
                    errors += 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    ordered = np.sort(np.asarray(latencies)) * 1000
    return {
        "requests_per_s": requests / seconds,
        "p50_ms": float(np.percentile(ordered, 50)),
        "p99_ms": float(np.percentile(ordered, 99)),
        "errors": errors,
    }


def served_batches(url: str) -> tuple[int, int]:
    import httpx2

    serving = httpx2.get(url + "/v1/model", timeout=30).json()["serving"]
    return serving["batches"], serving["images"]


def measure_levels(servers: dict[str, Server], images: list[bytes], args: argparse.Namespace) -> list[dict]:
    records = []
    for concurrency in args.concurrency:
        rounds: dict[str, list[dict]] = {name: [] for name in servers}
        batches: dict[str, tuple[int, int]] = {}
        for _ in range(args.rounds):  # alternate, so that a noisy spell falls on both servers
            for name, server in servers.items():
                before = served_batches(server.url)
                rounds[name].append(load(server, images, args.requests, concurrency))
                after = served_batches(server.url)
                done = batches.get(name, (0, 0))
                batches[name] = (done[0] + after[0] - before[0], done[1] + after[1] - before[1])
        for name, measured in rounds.items():
            records.append(
                {
                    "kind": "load",
                    "server": name,
                    "concurrency": concurrency,
                    "requests": args.requests,
                    "rounds": args.rounds,
                    **{key: round(statistics.median(m[key] for m in measured), 2) for key in measured[0]},
                    "errors": sum(m["errors"] for m in measured),
                    "mean_batch": round(batches[name][1] / max(batches[name][0], 1), 2),
                }
            )
        batched, unbatched = records[-2], records[-1]
        batched["speedup"] = round(batched["requests_per_s"] / unbatched["requests_per_s"], 2)
    return records


def measure_memory(server: Server, images: list[bytes], args: argparse.Namespace) -> dict:
    concurrency = max(args.concurrency)
    before = server.rss_mb()
    measured = load(server, images, args.memory_requests, concurrency)
    after = server.rss_mb()
    before, after = round(before, 1), round(after, 1)  # the growth is that of the figures recorded
    return {
        "kind": "memory",
        "server": "batched",
        "concurrency": concurrency,
        "requests": args.memory_requests,
        "rss_before_mb": before,
        "rss_after_mb": after,
        "growth_mb": round(after - before, 1),
        **{key: round(value, 2) for key, value in measured.items()},
    }


def measure_compute(run: Path, images: list[bytes], batch: int, rounds: int) -> dict:
    """What the server's forward pass costs per image alone, at batch 1 and at ``batch`` (no HTTP, no decoding):
    the most batching can gain on this machine."""
    from attnscope.engine.run import Run
    from attnscope.serve import ModelService, Upload

    service = ModelService(Run.open(run, progress=False))
    decoded = [service.decode(Upload(f"{n}.png", data)) for n, data in enumerate(images)]
    decoded = (decoded * (batch // len(decoded) + 1))[:batch]
    per_image: dict[int, list[float]] = {1: [], batch: []}
    for _ in range(rounds):
        for size in per_image:
            service.predict(decoded[:size])  # warm-up of this shape
            started = time.perf_counter()
            for start in range(0, batch, size):
                service.predict(decoded[start : start + size])
            per_image[size].append((time.perf_counter() - started) * 1000 / batch)
    alone, batched = statistics.median(per_image[1]), statistics.median(per_image[batch])
    return {
        "kind": "compute",
        "batch": batch,
        "ms_per_image_batch_1": round(alone, 3),
        "ms_per_image_batched": round(batched, 3),
        "gain": round(round(alone, 3) / round(batched, 3), 2),
    }


def measure(args: argparse.Namespace) -> list[dict]:
    from attnscope.training.precision import native_bf16

    with tempfile.TemporaryDirectory(prefix="attnscope-serve-bench-") as scratch:
        folder = Path(scratch)
        run = Path(args.run) if args.run else demo_run(folder)
        images = payloads(64)
        servers = {name: Server(run, name == "batched", folder / f"{name}.log") for name in SERVERS}
        try:
            for server in servers.values():
                server.wait()
                load(server, images, 32, 8)  # warm-up: first-call allocations, the model's caches
            records = [measure_compute(run, images, max(args.concurrency), args.rounds)]
            records += measure_levels(servers, images, args)
            if args.memory_requests:
                records.append(measure_memory(servers["batched"], images, args))
        finally:
            for server in servers.values():
                server.stop()
    facts = {"run": run.name, "native_bf16": native_bf16("cpu"), **run_facts()}
    return [{**record, **facts} for record in records]


def split_runs(records: list[dict]) -> list[list[dict]]:
    """The records of each benchmark run in a results file (every run starts with its compute record)."""
    runs: list[list[dict]] = []
    for record in records:
        if record["kind"] == "compute" or not runs:
            runs.append([])
        runs[-1].append(record)
    return runs


def markdown(records: list[dict]) -> str:
    """The table of the file's last run, its notes, and the batched / unbatched ratio of every run recorded."""
    from benchmarks.common import provenance

    runs = split_runs(records)
    last = runs[-1]
    lines = [
        "| server | concurrency | requests/s | p50 ms | p99 ms | errors | mean batch | batched / unbatched "
        "| CPU ms per request: server, client |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    loads = [r for r in last if r["kind"] == "load"]
    for r in loads:
        speedup = f"{r['speedup']:.2f}x" if "speedup" in r else ""
        lines.append(
            f"| {r['server']} | {r['concurrency']} | {r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
            f"| {r['errors']} | {r['mean_batch']:.1f} | {speedup} "
            f"| {r['server_cpu_ms']:.1f}, {r['client_cpu_ms']:.1f} |"
        )
    notes = [_note(r) for r in last if r["kind"] in ("memory", "compute")]
    top = max(r["concurrency"] for r in loads)
    ratios = [f"{r['speedup']:.2f}x" for run in runs for r in run if r.get("speedup") and r["concurrency"] == top]
    if len(runs) > 1:
        notes.append(
            f"Batched / unbatched at concurrency {top} in each of the {len(runs)} runs recorded: {', '.join(ratios)}."
        )
    bf16 = "with" if last[0].get("native_bf16") else "without"
    return (
        "\n".join(lines)
        + f"\n\n{' '.join(notes)} Medians of {loads[0]['rounds']} alternating rounds of {loads[0]['requests']} "
        f"requests (one 80 px PNG each, `POST /v1/predict`); client and server share the CPU {bf16} native bf16. "
        + provenance(records)
    )


def _note(r: dict) -> str:
    if r["kind"] == "memory":
        return (
            f"Memory of the batched server over {r['requests']:,} more requests at concurrency {r['concurrency']}: "
            f"{r['rss_before_mb']:.0f} MB before, {r['rss_after_mb']:.0f} MB after ({r['growth_mb']:+.1f} MB), "
            f"{r['errors']} errors, {r['requests_per_s']:.1f} requests/s."
        )
    return (
        "The forward pass alone (`ModelService.predict`, no HTTP, no decoding) takes "
        f"{r['ms_per_image_batch_1']:.2f} ms per image at batch 1 and {r['ms_per_image_batched']:.2f} "
        f"at batch {r['batch']}: {r['gain']:.2f}x, what batching gains on the forward pass itself."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="the run to serve (default: one epoch of the demo model, trained here)")
    parser.add_argument("--concurrency", default="1,8,32", help="requests in flight, comma-separated (default 1,8,32)")
    parser.add_argument("--requests", type=int, default=400, help="requests per level and round (default 400)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per level (default 3)")
    parser.add_argument(
        "--memory-requests", type=int, default=10_000, help="requests of the memory check (default 10,000; 0: none)"
    )
    add_result_arguments(parser)
    args = parser.parse_args()
    if print_table(args.table, markdown):
        return
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    if any(c < 1 for c in args.concurrency) or args.requests < 1 or args.rounds < 1:
        parser.error("--concurrency, --requests and --rounds must be positive")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    records = measure(args)
    append_records(args.out, records)
    print("\n".join(json.dumps(r) for r in records))


if __name__ == "__main__":
    main()
