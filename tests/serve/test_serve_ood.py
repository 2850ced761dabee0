"""The OOD test when serving: recognized and ood_score in every answer and history row,
"not a leaf" as feedback, and ``diagnoses export --outliers`` writing those photos where
``purenn train --outliers`` reads them."""

from __future__ import annotations

import pytest
from serve_helpers import create_app_for, image_bytes, make_model_with_ood

from purenn.cli.main import main
from purenn.data import scan_outlier_folder
from purenn.serve.store import NOT_A_LEAF


@pytest.fixture(scope="module")
def ood_model(tmp_path_factory):
    photos = [image_bytes(seed, size=(40, 30)) for seed in range(8)]
    return make_model_with_ood(tmp_path_factory.mktemp("ood") / "model.npz", photos)


@pytest.fixture
def ood_client(settings, ood_model):
    from fastapi.testclient import TestClient

    settings.model_path = ood_model[0]
    with TestClient(create_app_for(settings)) as c:
        yield c


def _post(client, data: bytes) -> dict:
    response = client.post("/api/predict", files={"file": ("p.png", data, "image/png")})
    assert response.status_code == 200, response.text
    return response.json()


def test_answers_and_history_say_whether_the_photo_was_recognized(ood_client, ood_model):
    _, known, unknown = ood_model
    assert ood_client.get("/api/model").json()["ood_test"] == "energy"
    yes, no = _post(ood_client, known), _post(ood_client, unknown)
    assert yes["recognized"] is True and no["recognized"] is False
    assert isinstance(yes["ood_score"], float) and no["ood_score"] > yes["ood_score"]
    assert len(no["predictions"]) == 3  # the guesses stay in the answer
    stored = ood_client.get(f"/api/diagnoses/{no['id']}").json()
    assert stored["recognized"] is False and stored["ood_score"] == no["ood_score"]
    items = ood_client.get("/api/diagnoses").json()["items"]
    assert [d["recognized"] for d in items] == [False, True]


def test_a_model_without_an_ood_test_recognizes_every_photo(client):
    assert client.get("/api/model").json()["ood_test"] is None
    answer = _post(client, image_bytes(3))
    assert answer["recognized"] is True and answer["ood_score"] is None


def test_feedback_accepts_not_a_leaf_and_names_it_when_refusing(ood_client, ood_model):
    answer = _post(ood_client, ood_model[2])
    url = f"/api/diagnoses/{answer['id']}/feedback"
    saved = ood_client.post(url, json={"label": NOT_A_LEAF})
    assert saved.status_code == 200 and saved.json()["feedback"] == "not a leaf"
    refused = ood_client.post(url, json={"label": "a rock"})
    assert refused.status_code == 422 and "'not a leaf'" in refused.json()["error"]


def test_export_writes_not_a_leaf_photos_where_outliers_are_read(
    ood_client, ood_model, settings, tmp_path, capsys
):
    _, known, unknown = ood_model
    leaf, other = _post(ood_client, known), _post(ood_client, unknown)
    ood_client.post(f"/api/diagnoses/{leaf['id']}/feedback", json={"label": "Leaf_rust"})
    ood_client.post(f"/api/diagnoses/{other['id']}/feedback", json={"label": NOT_A_LEAF})
    out, outliers = tmp_path / "leaves", tmp_path / "not-leaves"

    def export(*extra) -> str:
        assert main(["diagnoses", "export", settings.db, str(out), *extra]) == 0
        return capsys.readouterr().out

    assert "1 'not a leaf' photos left out (--outliers DIR" in export()
    assert [p.parent.name for p in out.rglob("*.png")] == ["Leaf_rust"]  # no "not a leaf" class
    assert "1 'not a leaf' photos in" in export("--outliers", str(outliers))
    scan = scan_outlier_folder(outliers)
    assert scan.files == [f"{other['image_sha256']}.png"] and scan.class_names == ["."]
    assert (outliers / scan.files[0]).read_bytes() == unknown
    # A photo relabelled from a class to "not a leaf" moves out of the training folder.
    ood_client.post(f"/api/diagnoses/{leaf['id']}/feedback", json={"label": NOT_A_LEAF})
    export("--outliers", str(outliers))
    assert list(out.rglob("*.png")) == [] and len(scan_outlier_folder(outliers).files) == 2


def test_export_refuses_an_outliers_folder_inside_the_training_folder(settings, tmp_path, capsys):
    code = main(
        ["diagnoses", "export", settings.db, str(tmp_path / "x"), "--outliers",
         str(tmp_path / "x" / "not-leaves")]
    )  # fmt: skip
    assert code != 0 and "must not be inside OUT_DIR" in capsys.readouterr().err
