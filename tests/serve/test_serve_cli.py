"""``purenn diagnoses export`` and the ``serve`` command's argument errors."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest
from serve_helpers import CLASSES, image_bytes

from purenn.cli.main import main
from purenn.cli.serve import default_images_dir
from purenn.data import scan_image_folder


def _diagnose_with_feedback(client, seeds_labels):
    ids = []
    for seed, label in seeds_labels:
        d = client.post("/api/predict", files={"file": ("x.png", image_bytes(seed))}).json()
        if label is not None:
            client.post(f"/api/diagnoses/{d['id']}/feedback", json={"label": label})
        ids.append(d["id"])
    return ids


def test_export_writes_a_training_folder_idempotently(client, settings, tmp_path, capsys):
    _diagnose_with_feedback(
        client, [(1, CLASSES[0]), (2, CLASSES[2]), (3, None), (1, CLASSES[1]), (4, CLASSES[2])]
    )
    out = tmp_path / "corrections"
    assert main(["diagnoses", "export", settings.db, str(out)]) == 0
    assert "3 images written" in capsys.readouterr().out
    scan = scan_image_folder(out)  # the layout purenn train reads
    assert scan.class_names == sorted([CLASSES[1], CLASSES[2]])  # seed 1's later feedback wins
    assert sorted(p.name for p in out.rglob("*.png")) == sorted(
        {f"{d['image_sha256']}.png" for d in client.get("/api/diagnoses").json()["items"]}
        - {f"{hashlib.sha256(image_bytes(3)).hexdigest()}.png"}  # no feedback
    )
    assert (out / CLASSES[1] / f"{hashlib.sha256(image_bytes(1)).hexdigest()}.png").is_file()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert main(["diagnoses", "export", settings.db, str(out)]) == 0
    assert "0 images written, 3 already there" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_export_skips_feedback_without_a_stored_image(settings, tmp_path, capsys):
    from fastapi.testclient import TestClient
    from serve_helpers import create_app_for

    settings.store_images = None
    with TestClient(create_app_for(settings)) as client:
        _diagnose_with_feedback(client, [(1, CLASSES[0])])
        assert client.get("/api/diagnoses").json()["items"][0]["thumbnail_url"] is None
    assert main(["diagnoses", "export", settings.db, str(tmp_path / "out")]) == 0
    assert "1 without a stored image" in capsys.readouterr().out


def test_export_of_a_missing_database_creates_nothing(tmp_path, capsys):
    assert main(["diagnoses", "export", str(tmp_path / "typo.db"), str(tmp_path / "out")]) == 2
    assert "database does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_serve_reports_a_bad_model_before_starting(tmp_path, capsys):
    bad = tmp_path / "model.npz"
    bad.write_bytes(b"\x80\x04 pickle")
    assert main(["serve", str(bad)]) == 2
    assert "pickle" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [["--max-batch", "0"], ["--store-images", "x", "--no-store-images"], ["--tta", "9"]],
)
def test_serve_argument_errors(model_file, args, capsys):
    assert main(["serve", str(model_file), *args]) == 2
    assert "purenn: error:" in capsys.readouterr().err


def test_serve_reports_a_bad_database_or_a_taken_port(model_file, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["serve", str(model_file), "--db", str(blocker / "h.db")]) == 2
    assert "cannot open database" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        db = str(tmp_path / "h.db")
        assert main(["serve", str(model_file), "--db", db, "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    for bad in ("65536", "-1", "http"):
        assert main(["serve", str(model_file), "--db", db, "--port", bad]) == 2
        assert f"argument --port: invalid port number (0-65535) value: '{bad}'" in (
            capsys.readouterr().err
        )


def test_default_images_folder():
    assert default_images_dir("runs/history.db").name == "images"
    assert default_images_dir("postgresql://u@host/db") is None


# -- access tokens ---------------------------------------------------------------------------
def test_tokens_add_list_revoke(tmp_path, capsys):
    import json

    db = str(tmp_path / "srv" / "history.db")
    assert main(["serve", "tokens", "add", "alice", "--role", "review", "--db", db]) == 0
    out = capsys.readouterr().out.splitlines()
    token = out[-1]  # printed once, as the last line
    assert token.startswith("pnn_") and "alice" in out[0]
    text = (tmp_path / "srv" / "tokens.json").read_text()  # beside the database
    assert token not in text and json.loads(text)["tokens"][0]["role"] == "review"
    assert main(["serve", "tokens", "list", "--db", db]) == 0
    listed = capsys.readouterr().out
    assert "alice\treview" in listed and "active" in listed and token not in listed
    assert main(["serve", "tokens", "revoke", "alice", "--db", db]) == 0
    assert main(["serve", "tokens", "list", "--db", db]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["serve", "tokens", "add", "bob", "--role", "root", "--db", db]) == 2
    assert main(["serve", "tokens", "revoke", "carol", "--db", db]) == 2
    assert "no active token named 'carol'" in capsys.readouterr().err


def test_serve_beyond_loopback_without_tokens_is_refused_with_the_command(
    model_file, tmp_path, capsys
):
    db = str(tmp_path / "srv" / "history.db")
    code = main(["serve", str(model_file), "--host", "0.0.0.0", "--db", db, "--port", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "listening on 0.0.0.0 needs access tokens" in err
    assert f"purenn serve tokens add NAME --role review --db {db}" in err
    assert not (tmp_path / "srv").exists()  # refused before the database is created
    code = main(["serve", str(model_file), "--require-tokens", "--db", db, "--port", "0"])
    assert code == 2 and "--require-tokens needs access tokens" in capsys.readouterr().err
    args = ["serve", str(model_file), "--host", "0.0.0.0", "--tokens", str(tmp_path / "t.json")]
    assert main(args) == 2
    assert f"--role review --tokens {tmp_path / 't.json'}" in capsys.readouterr().err
    assert main([*args, "--insecure-open", "--require-tokens"]) == 2
    assert "contradict" in capsys.readouterr().err


def test_only_loopback_addresses_count_as_loopback():
    from purenn.cli.serve import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("127.8.0.1") and is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    assert not is_loopback("::") and not is_loopback("leafbox.local")


def test_the_tokens_file_of_a_postgresql_database(tmp_path):
    from purenn.serve.tokens import default_tokens_path

    assert default_tokens_path("postgresql://u@h/db") == Path("purenn-serve") / "tokens.json"
    assert default_tokens_path(str(tmp_path / "h.db")) == tmp_path / "tokens.json"
