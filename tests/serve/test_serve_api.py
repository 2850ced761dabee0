"""The HTTP API in process: predictions, history, feedback, model, health, metrics, bad input."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image
from serve_helpers import CLASSES, IMAGE_SIZE, TEMPERATURE, image_bytes, stored_nothing

from purenn.data import normalize_batch
from purenn.data.decode import decode_image
from purenn.io import load_model
from purenn.kernels.ops import softmax


def post_image(client, data: bytes, name: str = "leaf.png", **params):
    return client.post("/api/predict", files={"file": (name, data)}, params=params)


def expected_probabilities(model_file, data: bytes, tmp_path) -> np.ndarray:
    """The calibrated probabilities of an image file: softmax(logits / T), T the model's."""
    path = tmp_path / "alone.png"
    path.write_bytes(data)
    model, meta = load_model(model_file)
    assert meta["temperature"] == TEMPERATURE
    x = normalize_batch(decode_image(path, IMAGE_SIZE)[None], meta["mean"], meta["std"])
    return softmax(model.forward(x, training=False).astype(np.float64) / TEMPERATURE)[0]


def test_predict_answers_top_k_and_stores_the_diagnosis(client, model_file, settings, tmp_path):
    data = image_bytes(1)
    r = post_image(client, data, top_k=2)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["predictions"]) == 2 and body["latency_ms"] > 0
    probs = expected_probabilities(model_file, data, tmp_path)
    best = np.argsort(-probs)[:2]
    assert [p["class"] for p in body["predictions"]] == [CLASSES[i] for i in best]
    np.testing.assert_allclose([p["probability"] for p in body["predictions"]], probs[best], 1e-6)
    sha = hashlib.sha256(data).hexdigest()
    assert body["image_sha256"] == sha
    assert body["model_id"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert (settings.store_images / f"{sha}.png").read_bytes() == data
    thumb = client.get(body["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (IMAGE_SIZE, IMAGE_SIZE)
    stored = client.get(f"/api/diagnoses/{body['id']}").json()
    assert stored["predictions"] == body["predictions"] and stored["feedback"] is None


def test_default_top_k_is_capped_at_the_classes(client):
    assert len(post_image(client, image_bytes(2)).json()["predictions"]) == len(CLASSES)


def test_history_is_newest_first_and_paginated(client):
    ids = [post_image(client, image_bytes(10 + i)).json()["id"] for i in range(5)]
    page = client.get("/api/diagnoses", params={"limit": 2}).json()
    assert [d["id"] for d in page["items"]] == ids[::-1][:2]
    page2 = client.get("/api/diagnoses", params={"limit": 2, "before": page["next_before"]}).json()
    assert [d["id"] for d in page2["items"]] == ids[::-1][2:4]
    last = client.get("/api/diagnoses", params={"limit": 2, "before": ids[1]}).json()
    assert [d["id"] for d in last["items"]] == [ids[0]] and last["next_before"] is None


def test_feedback_is_recorded_and_listed(client):
    diagnosis = post_image(client, image_bytes(3)).json()
    r = client.post(f"/api/diagnoses/{diagnosis['id']}/feedback", json={"label": CLASSES[2]})
    assert r.status_code == 200 and r.json()["feedback"] == CLASSES[2]
    items = client.get("/api/diagnoses").json()["items"]
    assert items[0]["id"] == diagnosis["id"] and items[0]["feedback"] == CLASSES[2]


def test_model_health_ready_and_openapi(client, model_file):
    info = client.get("/api/model").json()
    assert info["class_names"] == CLASSES and info["image_size"] == IMAGE_SIZE
    model, _ = load_model(model_file)
    assert info["parameters"] == model.num_parameters and info["test_accuracy"] is None
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["database"] == "ok"
    spec = client.get("/openapi.json").json()
    assert (
        "/api/predict" in spec["paths"]
        and "/api/diagnoses/{diagnosis_id}/feedback" in spec["paths"]
    )
    assert client.get("/docs").status_code == 404  # Swagger UI needs a CDN: turned off


def test_model_reports_the_runs_test_accuracy(settings, tmp_path):
    from fastapi.testclient import TestClient
    from serve_helpers import create_app_for, make_model

    run = tmp_path / "run"
    run.mkdir()
    settings.model_path = make_model(run / "best.npz")
    (run / "report.json").write_text(json.dumps({"accuracy": 0.875, "samples": 8}))
    with TestClient(create_app_for(settings)) as c:
        assert c.get("/api/model").json()["test_accuracy"] == 0.875


def test_tta_answers_the_mean_over_views_as_one_queue_entry(settings, model_file, tmp_path):
    from fastapi.testclient import TestClient
    from serve_helpers import create_app_for

    from purenn.inference import class_probabilities

    settings.tta = 8
    data = image_bytes(6)
    with TestClient(create_app_for(settings)) as c:
        assert c.get("/api/model").json()["tta"] == 8
        body = post_image(c, data, top_k=len(CLASSES)).json()
        metrics = c.get("/metrics").text
    path = tmp_path / "alone.png"
    path.write_bytes(data)
    model, meta = load_model(model_file)
    probs = class_probabilities(model, decode_image(path, IMAGE_SIZE)[None], meta, views=8)[0]
    got = {p["class"]: p["probability"] for p in body["predictions"]}
    np.testing.assert_allclose([got[name] for name in CLASSES], probs, rtol=1e-6)
    assert not np.allclose(probs, expected_probabilities(model_file, data, tmp_path), rtol=1e-3)
    # One request is one row of one batch: the eight views are passes inside it.
    assert (
        "purenn_batch_size_count 1" in metrics and 'purenn_batch_size_bucket{le="1"} 1' in metrics
    )


def test_page_and_its_assets_are_served_locally(client):
    page = client.get("/")
    assert page.status_code == 200 and 'accept="image/*"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    for asset in ("/page/app.js", "/page/style.css"):
        r = client.get(asset)
        assert r.status_code == 200 and "https://" not in r.text


def test_metrics_count_requests_batches_and_queue(client):
    post_image(client, image_bytes(4))
    post_image(client, b"not an image")
    text = client.get("/metrics").text
    assert 'purenn_requests_total{method="POST",endpoint="/api/predict",status="200"} 1' in text
    assert 'purenn_requests_total{method="POST",endpoint="/api/predict",status="400"} 1' in text
    assert 'purenn_batch_size_bucket{le="1"} 1' in text and "purenn_batch_size_count 1" in text
    assert "purenn_queue_depth 0" in text
    assert 'purenn_request_duration_seconds_count{method="POST",endpoint="/api/predict"} 2' in text


def _jpeg(seed: int = 5) -> bytes:
    return image_bytes(seed, "JPEG", (64, 48))


def _bomb() -> bytes:
    """A 1-bit PNG of 12,000 x 12,000 pixels (144 MP): a few KB that decode to 432 MB of RGB."""
    buffer = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(buffer, "PNG")
    return buffer.getvalue()


def _wide() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (25_000, 1)).save(buffer, "PNG")  # few pixels, but a side of 25,000
    return buffer.getvalue()


BAD_UPLOADS = {
    "not an image": (b"hello, this is text", "not an image"),
    "zero bytes": (b"", "empty upload"),
    "truncated jpeg": (_jpeg()[: len(_jpeg()) // 2], "truncated"),
    "corrupt jpeg": (_jpeg()[:200] + bytes(range(256)) * 4 + _jpeg()[1224:], "damaged"),
    "huge dimensions": (_wide(), "too large"),
}


@pytest.mark.parametrize("name", sorted(BAD_UPLOADS))
def test_bad_uploads_answer_400_and_store_nothing(client, settings, name):
    data, message = BAD_UPLOADS[name]
    r = post_image(client, data, "photo.jpg")
    assert r.status_code == 400, r.text
    assert message in r.json()["error"] and "photo.jpg" in r.json()["error"]
    assert stored_nothing(client, settings)
    assert client.get("/healthz").status_code == 200


def test_decompression_bomb_is_refused_before_decoding(client, settings, monkeypatch):
    from PIL import ImageFile

    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1))
    data = _bomb()
    assert len(data) < settings.max_upload_bytes
    r = post_image(client, data, "bomb.png")
    assert r.status_code == 400 and "too large" in r.json()["error"] and decoded == []
    assert stored_nothing(client, settings)


def test_pillow_bomb_limit_is_set_deliberately(client, settings):
    assert Image.MAX_IMAGE_PIXELS == settings.max_pixels
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_body_over_the_cap_is_413(client, settings):
    big = b"\xff" * (settings.max_upload_bytes + 1)
    r = post_image(client, big, "big.jpg")
    assert r.status_code == 413 and "too large" in r.json()["error"]
    assert stored_nothing(client, settings)


def test_chunked_body_over_the_cap_is_413(client, settings):
    """No Content-Length: the cap is enforced on the bytes received (see the uvicorn test for a
    body that is refused before it has all been sent)."""

    def body():
        for _ in range(30):  # 300 KB without Content-Length, the cap is 200 KB
            yield b"x" * 10_000

    r = client.post(
        "/api/predict", content=body(), headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert r.status_code == 413 and "too large" in r.json()["error"]
    assert stored_nothing(client, settings)


def test_missing_file_field(client):
    r = client.post("/api/predict", files={"photo": ("leaf.png", image_bytes(1))})
    assert r.status_code == 422 and "missing form field 'file'" in r.json()["error"]
    r = client.post("/api/predict")
    assert r.status_code == 422 and "'file'" in r.json()["error"]


def test_unknown_diagnosis_and_unknown_label(client):
    assert client.get("/api/diagnoses/999").status_code == 404
    r = client.post("/api/diagnoses/999/feedback", json={"label": CLASSES[0]})
    assert r.status_code == 404 and "999" in r.json()["error"]
    diagnosis = post_image(client, image_bytes(6)).json()
    r = client.post(f"/api/diagnoses/{diagnosis['id']}/feedback", json={"label": "Leaf_mould"})
    assert r.status_code == 422 and "unknown label 'Leaf_mould'" in r.json()["error"]
    assert client.get(f"/api/diagnoses/{diagnosis['id']}").json()["feedback"] is None
    r = client.post(f"/api/diagnoses/{diagnosis['id']}/feedback", content=b"{")
    assert r.status_code == 422 and "valid dictionary" in r.json()["error"]  # not sent as JSON
    r = client.post(
        f"/api/diagnoses/{diagnosis['id']}/feedback",
        content=b"{",
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422 and r.json()["error"].startswith("request body: not valid JSON")
    r = client.post(f"/api/diagnoses/{diagnosis['id']}/feedback", json={"label": "x" * 201})
    assert r.status_code == 422
    assert r.json() == {"error": "label: String should have at most 200 characters"}


def test_every_other_body_is_capped_too(client):
    """Feedback's JSON is under 1 KB: a body over 64 KiB is refused before it is parsed, by its
    Content-Length or, without one, as it streams in."""
    from purenn.serve.limits import MAX_OTHER_BODY_BYTES

    diagnosis = post_image(client, image_bytes(6)).json()
    path = f"/api/diagnoses/{diagnosis['id']}/feedback"
    big = b'{"label": "' + b"1" * MAX_OTHER_BODY_BYTES + b'"}'
    streamed = (big[i : i + 10_000] for i in range(0, len(big), 10_000))
    for content in (big, streamed):
        r = client.post(path, content=content, headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        assert r.json() == {"error": "request body too large: the limit is 65,536 bytes"}
    assert client.get(f"/api/diagnoses/{diagnosis['id']}").json()["feedback"] is None


def test_an_internal_error_is_json_and_the_server_goes_on(settings, monkeypatch):
    from fastapi.testclient import TestClient
    from serve_helpers import create_app_for

    def broken(images):
        raise FloatingPointError("overflow")

    with TestClient(create_app_for(settings), raise_server_exceptions=False) as client:
        monkeypatch.setattr(client.app.state.batcher, "forward", broken)
        r = post_image(client, image_bytes(8))
        assert r.status_code == 500
        assert r.json() == {"error": "internal error: FloatingPointError"}
        assert stored_nothing(client, settings)
        monkeypatch.undo()
        assert post_image(client, image_bytes(8)).status_code == 200


def test_bad_query_parameters(client):
    assert (
        client.post("/api/predict?top_k=0", files={"file": ("a", image_bytes(1))}).status_code
        == 422
    )
    r = client.get("/api/diagnoses", params={"limit": "many"})
    assert r.status_code == 422 and "limit" in r.json()["error"]
    assert client.get("/api/thumbnails/not-a-hash").status_code == 404


@pytest.mark.parametrize("bad_id", ["0", "-1", "abc", str(2**63), "9" * 40])
def test_diagnosis_ids_outside_the_databases_range_are_a_422(client, bad_id):
    """Past 2**63 - 1 SQLite's driver raised OverflowError: a 500, for a bad path."""
    answers = [
        client.get(f"/api/diagnoses/{bad_id}"),
        client.post(f"/api/diagnoses/{bad_id}/feedback", json={"label": "not a leaf"}),
        client.post(f"/api/diagnoses/{bad_id}/explain"),
        client.get("/api/diagnoses", params={"before": bad_id}),
    ]
    for r in answers:
        assert r.status_code == 422, (r.request.url, r.status_code, r.text)
        assert r.json()["error"].startswith(("diagnosis_id: ", "before: "))
    assert client.get(f"/api/diagnoses/{2**63 - 1}").status_code == 404  # the largest id
