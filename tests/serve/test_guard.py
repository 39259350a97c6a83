"""What a hostile page or client meets before and while its request is computed: host names, origins, the
token before the body, costs, a bounded queue, a deadline, decoded sizes, one error shape, a log line and
metrics per request."""

import io
import logging
import math
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from attnscope import cli
from attnscope.errors import ConfigError
from attnscope.serve.app import MAP_COST, ServeOptions, create_app, request_cost
from attnscope.serve.guard import host_name
from tests.serve.conftest import png_bytes
from tests.serve.test_app import LOCAL, TOKEN, files


def client_of(service, **options):
    return TestClient(create_app(service, ServeOptions(**options)), base_url=LOCAL)


@pytest.mark.parametrize(
    "header, name", [("localhost:8000", "localhost"), ("[::1]:8000", "::1"), ("127.0.0.1", "127.0.0.1"), ("a.b", "a.b")]
)
def test_host_names_are_read_without_their_port(header, name):
    assert host_name(header) == name


def test_a_page_of_another_site_cannot_reach_the_server_by_rebinding_or_posting(service):
    with client_of(service) as client:
        rebound = client.post("/v1/similar", files=files(png_bytes(1)), headers={"Host": "attacker.example"})
        assert rebound.status_code == 400
        assert "does not answer to the host name 'attacker.example'" in rebound.json()["error"]
        assert "--allowed-host" in rebound.json()["error"]
        assert client.get("/", headers={"Host": "attacker.example:8000"}).status_code == 400
        for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000"):
            assert client.get("/healthz", headers={"Host": host}).status_code == 200
        form = client.post(
            "/v1/explain",
            files=files(png_bytes(1)),
            data={"method": "gradcam"},
            headers={"Origin": "https://evil.example"},
        )
        assert form.status_code == 403 and "a page of https://evil.example may not call" in form.json()["error"]
        own = client.post("/v1/predict", files=files(png_bytes(1)), headers={"Origin": "http://localhost"})
        assert own.status_code == 200  # the viewer page posts from the server's own origin
    with client_of(service, cors="https://viewer.example", allowed_hosts=("scans.example",)) as client:
        allowed = {"Origin": "https://viewer.example", "Host": "scans.example"}
        assert client.post("/v1/predict", files=files(png_bytes(1)), headers=allowed).status_code == 200
        assert client.get("/healthz").status_code == 400  # localhost is not among the names given


def test_the_token_is_checked_before_the_body_is_read(service):
    with client_of(service, token=TOKEN, max_images=4) as client:
        parts = files(*[b"x"] * 1001)
        refused = client.post("/v1/predict", files=parts)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert refused.json() == {"error": "this server needs Authorization: Bearer <token>"}
        authorised = {"Authorization": f"Bearer {TOKEN}"}
        too_many = client.post("/v1/predict", files=parts, headers=authorised)
        assert too_many.status_code in (400, 413) and "error" in too_many.json()


def test_every_status_has_the_one_error_shape(service):
    with client_of(service) as client:
        missing = client.get("/v2/nothing")
        assert missing.status_code == 404 and set(missing.json()) == {"error"}
        wrong_verb = client.get("/v1/predict")
        assert wrong_verb.status_code == 405 and set(wrong_verb.json()) == {"error"}
        broken = client.post(
            "/v1/predict", content=b"--x\r\nnot a part", headers={"Content-Type": "multipart/form-data; boundary=x"}
        )
        assert 400 <= broken.status_code < 500 and set(broken.json()) == {"error"}


def test_a_request_that_would_cost_too_much_is_refused_before_decoding(service, monkeypatch):
    assert request_cost(None, 16) == 16 and request_cost("gradcam", 2) == 6
    assert request_cost("occlusion", 1) == 1 + MAP_COST["occlusion"]
    decoded = []
    monkeypatch.setattr(service, "decode", lambda upload, byte_limit=None: decoded.append(upload) or None)
    with client_of(service) as client:
        costly = client.post("/v1/explain", files=files(png_bytes(1)), data={"method": "scorecam"})
        assert costly.status_code == 400
        assert (
            "cost about 2301 forward passes; this server allows 400 per request (--max-cost)" in costly.json()["error"]
        )
        two = client.post("/v1/explain", files=files(png_bytes(1), png_bytes(2)), data={"method": "occlusion"})
        assert two.status_code == 400 and "602 forward passes" in two.json()["error"]
    assert decoded == []


def test_an_image_that_decodes_to_too_many_bytes_is_refused_by_its_header(service):
    buffer = io.BytesIO()
    Image.fromarray(np.full((1200, 1000), 4095, dtype=np.uint16)).save(buffer, format="PNG")  # 12 bits in 16
    with client_of(service, max_decoded_mb=2) as client:
        refused = client.post("/v1/predict", files=files(buffer.getvalue()))
        assert refused.status_code == 422
        message = refused.json()["error"]
        assert "1000 x 1200 pixels of mode I;16 decode to 2 MB, above this server's limit of 2 MB" in message
        assert "--max-decoded-mb" in message
        assert client.post("/v1/predict", files=files(png_bytes(1, (1000, 600)))).status_code == 200  # 1.8 MB


def slow(service, monkeypatch, seconds, started=None):
    """Make every batch of ``service`` take ``seconds``; ``started`` is set when the first begins."""
    predict = service.predict

    def slowly(images):
        if started is not None:
            started.set()
        time.sleep(seconds)
        return predict(images)

    monkeypatch.setattr(service, "predict", slowly)


def test_a_full_queue_answers_503_with_retry_after(service, monkeypatch):
    started = threading.Event()
    slow(service, monkeypatch, 1.0, started)
    with client_of(service, max_queue=2, max_images=2, batching=False) as client:
        answers = []
        first = threading.Thread(target=lambda: answers.append(client.post("/v1/predict", files=files(png_bytes(1)))))
        first.start()
        assert started.wait(10)  # the first is computing; the queue is empty
        waiting = threading.Thread(
            target=lambda: answers.append(client.post("/v1/predict", files=files(png_bytes(2), png_bytes(3))))
        )
        waiting.start()
        deadline = time.monotonic() + 10
        while client.app.state.batcher.queued < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = client.post("/v1/predict", files=files(png_bytes(4)))
        assert busy.status_code == 503 and busy.headers["retry-after"] == "2"
        assert "the server is busy (2 image(s) waiting, the queue holds 2)" in busy.json()["error"]
        first.join()
        waiting.join()
        assert sorted(a.status_code for a in answers) == [200, 200]


def test_a_request_past_its_deadline_is_cancelled_and_answered_504(service, monkeypatch):
    slow(service, monkeypatch, 1.5)
    with client_of(service, deadline_s=0.3) as client:
        late = client.post("/v1/predict", files=files(png_bytes(1)))
        assert late.status_code == 504
        assert late.json() == {"error": "the request was not answered within 0.3 s (--deadline); it was cancelled"}


def test_each_request_is_logged_and_counted(service, caplog):
    with caplog.at_level(logging.INFO, logger="attnscope.serve.access"), client_of(service, token=TOKEN) as client:
        client.post(
            "/v1/predict", files=files(png_bytes(1), png_bytes(2)), headers={"Authorization": f"Bearer {TOKEN}"}
        )
        client.post("/v1/predict", files=files(png_bytes(1)))
        client.get("/nowhere/1")
        scrape = client.get("/metrics")
    lines = [record.getMessage() for record in caplog.records if record.name == "attnscope.serve.access"]
    assert any('"POST /v1/predict" 200' in line and "2 image(s)" in line for line in lines)
    assert any('"POST /v1/predict" 401' in line for line in lines)
    text = scrape.text
    assert scrape.headers["content-type"].startswith("text/plain")
    assert 'attnscope_requests_total{method="POST",route="/v1/predict",status="200"} 1.0' in text
    assert 'attnscope_requests_total{method="POST",route="/v1/predict",status="401"} 1.0' in text
    assert 'attnscope_requests_total{method="GET",route="other",status="404"} 1.0' in text
    assert "attnscope_batch_images_count 1.0" in text and "attnscope_queue_images 0.0" in text
    assert 'attnscope_request_images_sum{route="/v1/predict"} 2.0' in text


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_upload_mb": math.inf}, "--max-upload-mb=inf must be a number from"),
        ({"max_upload_mb": math.nan}, "--max-upload-mb=nan must be a number from"),
        ({"deadline_s": 0}, "--deadline=0 must be a number from 0.1"),
        ({"max_cost": 2.5}, "--max-cost=2.5 must be an integer"),
        ({"max_queue": 4, "max_images": 8}, "--max-queue=4 must be at least --max-images=8"),
        ({"max_client_queue": 4, "max_images": 8}, "--max-client-queue=4 must be an integer from 8 to 64"),
        ({"max_client_connections": 65}, "--max-client-connections=65 must be an integer from 1 to 64"),
    ],
)
def test_limits_no_server_could_use_are_refused_by_flag(service, options, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        create_app(service, ServeOptions(**options))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--port", "70000"], "--port=70000 must be from 1 to 65535"),
        (["--max-upload-mb", "inf"], "--max-upload-mb=inf"),
        (["--max-connections", "8", "--max-client-connections", "9"], "--max-client-connections=9 must be"),
    ],
)
def test_the_serve_command_refuses_bad_limits_in_one_line(trained_run, capsys, argv, message):
    assert cli.main(["serve", str(trained_run), *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bodies_being_read_and_answered_share_a_budget_that_small_requests_pass_beside():
    import asyncio

    from attnscope.serve.guard import GuardRules, RequestGuard

    async def app(scope, receive, send):  # an app that takes its time over /slow, holding its body's bytes
        while (await receive()).get("more_body"):
            pass
        if scope["path"] == "/slow":
            await asyncio.sleep(1.0)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard = RequestGuard(app, GuardRules(("localhost",), None, None, 100, 0.3, max_pending_bytes=150))

    async def post(path, size):
        scope = {
            "type": "http",
            "method": "POST",
            "path": path,
            "headers": [(b"host", b"localhost"), (b"content-length", str(size).encode())],
        }
        statuses = []

        async def receive():
            return {"type": "http.request", "body": b"x" * size, "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await guard(scope, receive, send)
        return statuses[0]

    async def scenario():
        slow = asyncio.create_task(post("/slow", 100))  # holds 100 of the 150 bytes for a second
        await asyncio.sleep(0.05)
        return await asyncio.gather(slow, post("/fast", 100), post("/fast", 40))

    # the second large body finds no room within its time (503); the small one fits beside the first
    assert asyncio.run(scenario()) == [200, 503, 200]


def test_the_shares_of_one_client_default_to_a_quarter_of_the_limits():
    assert ServeOptions().client_connections() == 16 and ServeOptions().client_queue() == 16
    assert ServeOptions(max_connections=200, max_queue=400).client_connections() == 50
    assert ServeOptions(max_queue=40, max_images=16).client_queue() == 16  # one request of the most images fits
