"""The HTTP API: answers, limits, tokens, errors, CORS, and nothing read or written on the server's disk."""

import os
import struct
import zlib

import pytest
from fastapi.testclient import TestClient

from attnscope.errors import ConfigError
from attnscope.serve import Upload
from attnscope.serve.app import ServeOptions, create_app
from tests.serve.conftest import png_bytes

TOKEN = "a-token-of-sixteen-or-more"
LOCAL = "http://localhost"  # the test client's default host name, testserver, is not one the server answers to


@pytest.fixture(scope="module")
def client(service):
    with TestClient(create_app(service, ServeOptions(max_upload_mb=0.5, max_images=4)), base_url=LOCAL) as test_client:
        yield test_client


def files(*payloads, name="case.png"):
    return [("images", (f"{number}-{name}", payload, "image/png")) for number, payload in enumerate(payloads)]


def huge_png_header(width=50_000, height=50_000):
    """A PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's first bytes)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def test_predict_answers_every_image_with_the_run_threshold_and_identity(client, service):
    payloads = [png_bytes(1), png_bytes(2)]
    response = client.post("/v1/predict", files=files(*payloads))
    assert response.status_code == 200
    body = response.json()
    assert body["run"] == service.run.root.name and body["weights_sha256"] == service.weights_sha256
    assert body["threshold"] == service.run.threshold
    assert body["operating_point"] == service.operating_point()
    expected = service.predict([service.decode(Upload("x", p)) for p in payloads])
    assert [r["name"] for r in body["results"]] == ["0-case.png", "1-case.png"]
    for result, reference in zip(body["results"], expected, strict=True):
        assert result["predicted"] == reference["predicted"]
        assert result["probabilities"] == pytest.approx(reference["probabilities"], abs=1e-6)


def test_explain_and_similar_answer_through_http(client, service):
    explained = client.post("/v1/explain", files=files(png_bytes(3)), data={"method": "layercam"}).json()
    assert [m["name"] for m in explained["results"][0]["maps"]] == ["attention:pool3", "attention:pool4", "layercam"]
    assert "not rescaled" in explained["normalisation"]
    for target in ("benign", "malignant", "1"):  # a chosen class (a finding), by name or index
        chosen = client.post("/v1/explain", files=files(png_bytes(3)), data={"method": "gradcam", "target": target})
        expected = service.explain(
            [service.decode(Upload("x", png_bytes(3)))], "gradcam", 0 if target == "benign" else 1
        )
        assert chosen.json()["results"][0]["target"] == expected[0]["target"]
        assert chosen.json()["results"][0]["probability"] == pytest.approx(expected[0]["probability"], abs=1e-6)
    refused = client.post("/v1/explain", files=files(png_bytes(3)), data={"target": "melanoma"})
    assert refused.status_code == 400 and "is not a class of" in refused.json()["error"]
    similar = client.post("/v1/similar", files=files(png_bytes(3)), data={"k": "5"}).json()
    assert len(similar["results"][0]["neighbours"]) == 5
    expected = service.similar([service.decode(Upload("x", png_bytes(3)))], 5)[0]["neighbours"]
    assert [n["id"] for n in similar["results"][0]["neighbours"]] == [n["id"] for n in expected]


def test_model_health_and_page(client, service):
    assert client.get("/healthz").json() == {"status": "ok", "token_required": False}
    card = client.get("/v1/model").json()
    assert card["classes"] == service.run.classes and card["serving"]["max_images"] == 4
    assert card["temperature"] == service.run.temperature is not None  # the page says calibrated only then
    page = client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        (b"%PDF-1.4 not an image", 422, "0-case.png: not an image Pillow can read"),
        (png_bytes(4)[:60], 422, "0-case.png: truncated or corrupt image"),
        (huge_png_header(12_000, 12_000), 422, "0-case.png: 12000 x 12000 pixels is above the limit"),
        (huge_png_header(), 422, "0-case.png: too many pixels to decode safely"),
        (b"", 422, "0-case.png: an empty file"),
    ],
)
def test_bad_images_are_4xx_json_naming_the_upload_never_a_traceback(client, payload, status, message):
    response = client.post("/v1/predict", files=files(payload))
    assert response.status_code == status
    assert response.json()["error"].startswith(message)
    assert "Traceback" not in response.text


def test_requests_over_the_limits_are_refused_before_decoding(client):
    big = os.urandom(600_000)
    response = client.post("/v1/predict", files=files(big))
    assert response.status_code == 413 and "limit of 0.5 MB" in response.json()["error"]

    def chunks():  # no Content-Length: the limit is counted as the body streams in
        for _ in range(8):
            yield os.urandom(100_000)

    streamed = client.post("/v1/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert streamed.status_code == 413
    many = client.post("/v1/predict", files=files(*[png_bytes(i) for i in range(5)]))
    assert many.status_code == 413 and "5 images in one request; the limit is 4" in many.json()["error"]


def test_malformed_requests_say_what_is_wrong(client):
    assert client.post("/v1/predict").json() == {"error": "images: Field required"}
    wrong = client.post("/v1/explain", files=files(png_bytes(1)), data={"method": "saliency"})
    assert wrong.status_code == 400 and "use one of gradcam" in wrong.json()["error"]
    k = client.post("/v1/similar", files=files(png_bytes(1)), data={"k": "500"})
    assert k.status_code == 400 and k.json()["error"] == "k=500 must lie between 1 and 50"


def test_no_route_reads_a_file_the_request_names(client, image_files):
    for path in ("/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/static/../config.yaml", "/v1/../config.yaml"):
        response = client.get(path)
        assert response.status_code == 404 and "root:" not in response.text and "model:" not in response.text
    real_image = image_files[0].resolve()  # a file the server could read, named by the upload
    response = client.post("/v1/predict", files=[("images", (str(real_image), b"not pixels", "image/png"))])
    assert response.status_code == 422 and response.json()["error"].startswith(f"{real_image.name}: not an image")


def test_nothing_is_written_to_the_run_or_the_working_folder(client, served_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def listing(folder):
        return {(p, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}

    before = listing(served_run.parent), listing(tmp_path)
    for endpoint in ("predict", "explain", "similar"):
        assert client.post(f"/v1/{endpoint}", files=files(png_bytes(7), png_bytes(8))).status_code == 200
    assert (listing(served_run.parent), listing(tmp_path)) == before


def test_a_server_failure_is_a_bare_500_and_the_server_goes_on(service, monkeypatch):
    with TestClient(create_app(service), base_url=LOCAL, raise_server_exceptions=False) as test_client:
        monkeypatch.setattr(service, "predict", lambda images: 1 / 0)
        failed = test_client.post("/v1/predict", files=files(png_bytes(1)))
        assert failed.status_code == 500
        assert failed.json() == {"error": "the server failed on this request; its log says why"}
        monkeypatch.undo()
        assert test_client.post("/v1/predict", files=files(png_bytes(1))).status_code == 200


def test_a_token_guards_every_api_call_but_not_the_page_or_health(service):
    with TestClient(create_app(service, ServeOptions(token=TOKEN)), base_url=LOCAL) as test_client:
        assert test_client.get("/healthz").json()["token_required"] is True
        assert test_client.get("/").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": f"Basic {TOKEN}"}):
            refused = test_client.get("/v1/model", headers=headers)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert test_client.post("/v1/predict", files=files(png_bytes(1)), headers=headers).status_code == 401
        allowed = {"Authorization": f"Bearer {TOKEN}"}
        assert test_client.get("/v1/model", headers=allowed).status_code == 200
        assert test_client.post("/v1/predict", files=files(png_bytes(1)), headers=allowed).status_code == 200
    with pytest.raises(ConfigError, match="--token must be at least 16 characters"):
        create_app(service, ServeOptions(token="short"))


def test_cors_is_off_unless_an_origin_is_given(client, service):
    preflight = {"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.options("/v1/predict", headers=preflight).headers
    assert "access-control-allow-origin" not in client.get("/v1/model", headers={"Origin": preflight["Origin"]}).headers
    options = ServeOptions(cors="https://viewer.example", max_upload_mb=0.1)
    with TestClient(create_app(service, options), base_url=LOCAL) as test_client:
        allowed = test_client.get("/v1/model", headers={"Origin": "https://viewer.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://viewer.example"
        too_big = test_client.post(
            "/v1/predict", files=files(os.urandom(200_000)), headers={"Origin": "https://viewer.example"}
        )
        assert too_big.status_code == 413  # and the page of that origin may read why
        assert too_big.headers["access-control-allow-origin"] == "https://viewer.example"
        other = test_client.get("/v1/model", headers={"Origin": "https://elsewhere.example"})
        assert "access-control-allow-origin" not in other.headers


def test_concurrent_requests_are_batched_and_answered_alike(service):
    import concurrent.futures

    options = ServeOptions(max_batch=8, max_wait_ms=200)
    with TestClient(create_app(service, options), base_url=LOCAL) as test_client:
        payloads = [png_bytes(20 + i) for i in range(8)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda p: test_client.post("/v1/predict", files=files(p)).json(), payloads))
        serving = test_client.get("/v1/model").json()["serving"]
    assert serving["images"] == 8 and serving["batches"] < 8 and serving["largest_batch"] > 1
    expected = service.predict([service.decode(Upload("x", p)) for p in payloads])
    for answer, reference in zip(answers, expected, strict=True):
        assert answer["results"][0]["probabilities"] == pytest.approx(reference["probabilities"], abs=1e-6)
