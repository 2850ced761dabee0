"""``POST /api/explain`` in process: the overlay PNG, its headers, bad input, nothing stored."""

from __future__ import annotations

import io
import threading
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image
from serve_helpers import CLASSES, IMAGE_SIZE, image_bytes, stored_nothing
from test_serve_api import BAD_UPLOADS, _bomb, post_image

from purenn.data import decode_image_bytes
from purenn.data.decode import square_chw
from purenn.explain.photo import explain_photo
from purenn.io import load_model

SIZE = (80, 64)  # the photos' width x height (a JPEG this size is decoded at 1/4 scale)


def post_explain(client, data: bytes, name: str = "leaf.png", **params):
    return client.post("/api/explain", files={"file": (name, data)}, params=params)


@pytest.mark.parametrize("method", ["gradcam", "saliency"])
def test_explain_answers_the_overlay_png_of_explain_photo(client, model_file, method):
    data = image_bytes(5, "JPEG", size=SIZE)
    r = post_explain(client, data, "leaf.jpg", method=method)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png" and r.headers["x-method"] == method
    assert Image.open(io.BytesIO(r.content)).size == SIZE
    model, meta = load_model(model_file)
    photo = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    pixels = decode_image_bytes(data, IMAGE_SIZE)  # what /api/predict gives the model
    assert not np.array_equal(pixels, square_chw(Image.fromarray(photo), IMAGE_SIZE))
    expected = explain_photo(model, meta, photo, method, pixels=pixels)
    assert r.content == expected.png
    assert unquote(r.headers["x-class"]) == expected.class_name == expected.predicted
    assert unquote(r.headers["x-predicted"]) == expected.predicted
    assert int(r.headers["x-class-index"]) == expected.class_index
    assert float(r.headers["x-probability"]) == pytest.approx(expected.probability, rel=1e-12)
    # The class and probability explained are the ones /api/predict shows for this photo.
    top = post_image(client, data, "leaf.jpg").json()["predictions"][0]
    assert top["class"] == expected.class_name
    assert top["probability"] == pytest.approx(expected.probability, rel=1e-6)


def test_explain_a_chosen_class_and_store_nothing(client, settings):
    data = image_bytes(6, size=SIZE)
    for index, name in enumerate(CLASSES):  # "Leaf, spot (grey)" needs percent-encoding
        r = post_explain(client, data, **{"class": name})
        assert r.status_code == 200, r.text
        assert unquote(r.headers["x-class"]) == name and r.headers["x-class-index"] == str(index)
    overlays = {post_explain(client, data, **{"class": n}).content for n in CLASSES}
    assert len(overlays) == len(CLASSES)  # a different map per class
    assert stored_nothing(client, settings)
    metrics = client.get("/metrics").text
    assert 'endpoint="/api/explain",status="200"' in metrics


@pytest.mark.parametrize("name", sorted(BAD_UPLOADS))
def test_explain_bad_uploads_answer_400_as_predict_does(client, settings, name):
    data, message = BAD_UPLOADS[name]
    r = post_explain(client, data, "photo.jpg")
    assert r.status_code == 400, r.text
    assert message in r.json()["error"] and "photo.jpg" in r.json()["error"]
    assert r.json() == post_image(client, data, "photo.jpg").json()  # the same check, same words
    assert stored_nothing(client, settings)


def test_explain_refuses_a_bomb_before_decoding(client, settings, monkeypatch):
    from PIL import ImageFile

    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1))
    r = post_explain(client, _bomb(), "bomb.png")
    assert r.status_code == 400 and "too large" in r.json()["error"] and decoded == []


def test_explain_other_bad_requests_are_4xx_json(client, settings):
    cases = [
        (post_explain(client, b"x" * (settings.max_upload_bytes + 1)), 413, "upload too large"),
        (client.post("/api/explain", data={"other": "1"}), 422, "missing form field 'file'"),
        (post_explain(client, image_bytes(1), method="lime"), 422, "method"),
        (post_explain(client, image_bytes(1), **{"class": "Leaf_mildew"}), 422, "unknown class"),
    ]
    for r, status, words in cases:
        assert r.status_code == status, (words, r.text)
        assert words in r.json()["error"], r.json()
    assert stored_nothing(client, settings)
    metrics = client.get("/metrics").text
    for status in ("413", "422"):
        assert f'endpoint="/api/explain",status="{status}"' in metrics


def test_explain_large_photo_is_scaled_down_for_the_overlay(client):
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize((2048, 512)).convert("RGB").save(buffer, "PNG")
    r = post_explain(client, buffer.getvalue())
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == (1024, 256)


def test_explain_runs_between_passes_and_the_queue_bound_applies(client):
    state = client.app.state
    release, started = threading.Event(), threading.Event()

    def hold():
        started.set()
        release.wait(30)

    state.batcher.call(hold)  # occupies the inference thread
    assert started.wait(30)
    for _ in range(state.batcher.max_queue):
        state.batcher.call(lambda: None)
    try:
        r = post_explain(client, image_bytes(9))
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
    finally:
        release.set()
    assert post_explain(client, image_bytes(9)).status_code == 200


def test_openapi_describes_the_png_and_its_headers(client):
    spec = client.get("/openapi.json").json()["paths"]["/api/explain"]["post"]
    answer = spec["responses"]["200"]
    assert "image/png" in answer["content"] and "X-Probability" in answer["headers"]
    assert {p["name"] for p in spec["parameters"]} == {"method", "class"}


def test_explain_a_stored_diagnosis(client, settings):
    data = image_bytes(11, "JPEG", size=SIZE)
    diagnosis = post_image(client, data, "leaf.jpg").json()
    r = client.post(f"/api/diagnoses/{diagnosis['id']}/explain", params={"method": "saliency"})
    assert r.status_code == 200, r.text
    assert r.content == post_explain(client, data, "leaf.jpg", method="saliency").content
    assert unquote(r.headers["x-class"]) == diagnosis["predictions"][0]["class"]
    assert client.post("/api/diagnoses/999/explain").status_code == 404
    r = client.post(f"/api/diagnoses/{diagnosis['id']}/explain", params={"class": "nope"})
    assert r.status_code == 422
    stored = next(settings.store_images.glob("*.jpg"))
    stored.unlink()  # the file is gone (or the history names another machine's file)
    r = client.post(f"/api/diagnoses/{diagnosis['id']}/explain")
    assert r.status_code == 404 and "not stored on this server" in r.json()["error"]
    assert len(client.get("/api/diagnoses").json()["items"]) == 1  # explaining adds no row


def test_explanations_among_concurrent_predictions_change_no_answer(client):
    from concurrent.futures import ThreadPoolExecutor

    photos = [image_bytes(20 + i, size=SIZE) for i in range(4)]
    alone = [
        (post_image(client, d).json()["predictions"], post_explain(client, d).content)
        for d in photos
    ]

    def both(i: int):
        return post_image(client, photos[i % 4]).json()["predictions"], post_explain(
            client, photos[i % 4]
        ).content

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(both, range(48), timeout=120))
    for i, (predictions, png) in enumerate(answers):
        expected, expected_png = alone[i % 4]
        assert [p["class"] for p in predictions] == [p["class"] for p in expected]
        np.testing.assert_allclose(
            [p["probability"] for p in predictions], [p["probability"] for p in expected], 1e-5
        )
        assert png == expected_png
