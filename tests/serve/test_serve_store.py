"""The history store, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest

from purenn.serve.store import SCHEMA_VERSION, StoreError, open_store

TOP = [{"class": "a", "probability": 0.75}, {"class": "b", "probability": 0.25}]


@pytest.fixture
def store(db_url):
    s = open_store(db_url)
    yield s
    s.close()


def test_add_get_list_feedback(store):
    first = store.add("1" * 64, "/img/1.png", "model-a", TOP)
    second = store.add("2" * 64, None, "model-a", TOP[::-1])
    assert second.id > first.id
    got = store.get(first.id)
    assert got.top_k == TOP and got.image_path == "/img/1.png" and got.feedback_label is None
    assert got.created_at.endswith("+00:00")
    assert [d.id for d in store.newest()] == [second.id, first.id]
    assert [d.id for d in store.newest(limit=1, before=second.id)] == [first.id]
    assert store.get(second.id + 100) is None
    updated = store.set_feedback(first.id, "b")
    assert updated.feedback_label == "b" and updated.feedback_at >= updated.created_at
    assert store.set_feedback(second.id + 100, "b") is None
    assert [d.id for d in store.with_feedback()] == [first.id]
    assert store.ping() and store.schema_version() == SCHEMA_VERSION


def _old_database(db_url, monkeypatch, version: int) -> int:
    """A database as the code of schema ``version`` left it, with one row; returns its id."""
    from purenn.serve import store as store_module

    with monkeypatch.context() as m:
        m.setattr(store_module, "_MIGRATIONS", store_module._MIGRATIONS[:version])
        m.setattr(store_module, "SCHEMA_VERSION", version)
        old = open_store(db_url)
        with old._lock, old._transaction(write=True):  # the INSERT of those versions
            row = old._execute(
                "INSERT INTO diagnoses (created_at, image_sha256, image_path, model_id, top_k, "
                "feedback_label, feedback_at) VALUES ('t', ?, NULL, 'model-a', ?, 'a', 'x') "
                "RETURNING id",
                ("1" * 64, json.dumps(TOP)),
            ).fetchone()
        assert old.schema_version() == version
        old.close()
    return row[0]


def test_a_version_1_database_gains_the_reviewer_and_ood_columns(db_url, monkeypatch):
    first = _old_database(db_url, monkeypatch, 1)
    store = open_store(db_url)
    try:
        assert store.schema_version() == SCHEMA_VERSION == 3
        kept = store.get(first)
        assert kept.feedback_label == "a" and kept.feedback_by is None
        assert kept.recognized is None and kept.ood_score is None
        assert store.set_feedback(first, "b", by="alice").feedback_by == "alice"
    finally:
        store.close()


def test_a_version_2_database_gains_the_ood_columns(db_url, monkeypatch):
    first = _old_database(db_url, monkeypatch, 2)
    store = open_store(db_url)
    try:
        assert store.schema_version() == 3
        kept = store.get(first)
        assert kept.top_k == TOP and kept.feedback_label == "a"
        assert kept.to_json()["recognized"] is None and kept.to_json()["ood_score"] is None
        new = store.add("2" * 64, None, "model-a", TOP, recognized=False, ood_score=1.25)
        again = store.get(new.id)
        assert again.recognized is False and again.ood_score == 1.25
        assert store.add("3" * 64, None, "m", TOP, recognized=True).recognized is True
        assert store.get(new.id + 1).recognized is True and store.get(new.id + 1).ood_score is None
    finally:
        store.close()


def test_reopening_keeps_the_history_and_two_connections_share_it(db_url):
    a, b = open_store(db_url), open_store(db_url)  # two servers on one database
    try:
        d = a.add("3" * 64, None, "m", TOP)
        assert b.get(d.id).top_k == TOP
        b.set_feedback(d.id, "a")
        assert a.get(d.id).feedback_label == "a"
    finally:
        a.close()
        b.close()
    again = open_store(db_url)
    try:
        assert [x.feedback_label for x in again.newest()] == ["a"]
    finally:
        again.close()


def test_concurrent_writers_get_distinct_ids(store):
    ids, errors = [], []

    def write(n):
        try:
            for i in range(10):
                ids.append(store.add(f"{n}{i}".ljust(64, "0"), None, "m", TOP).id)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and len(set(ids)) == 40 and len(store.newest(limit=100)) == 40


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "h.db"
    open_store(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}"):
        open_store(path)


def test_sqlite_is_in_wal_mode(tmp_path):
    open_store(tmp_path / "h.db").close()
    with sqlite3.connect(tmp_path / "h.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_unreachable_databases_are_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot open database"):
        open_store(blocker / "sub" / "h.db")
    pytest.importorskip("psycopg")
    with pytest.raises(StoreError, match=r"postgres:\*\*\*@"):
        open_store(f"postgresql://postgres:secret@/nodb?host={tmp_path}&port=1")


def test_the_app_on_postgresql(settings, postgres_server):
    from fastapi.testclient import TestClient
    from serve_helpers import CLASSES, create_app_for, image_bytes

    settings.db = postgres_server()
    with TestClient(create_app_for(settings)) as client:
        d = client.post("/api/predict", files={"file": ("a.png", image_bytes(1))}).json()
        client.post(f"/api/diagnoses/{d['id']}/feedback", json={"label": CLASSES[1]})
        assert client.get("/readyz").json()["database"] == "ok"
    with TestClient(create_app_for(settings)) as client:  # a second server, same history
        items = client.get("/api/diagnoses").json()["items"]
        assert [(i["id"], i["feedback"]) for i in items] == [(d["id"], CLASSES[1])]
