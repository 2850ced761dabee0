"""Fixtures of the serving tests: a model file, settings, an in-process app, PostgreSQL."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from serve_helpers import create_app_for, free_port, make_model


@pytest.fixture(scope="session")
def model_file(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("model") / "model.npz")


@pytest.fixture
def settings(model_file, tmp_path):
    from purenn.serve.app import Settings

    return Settings(
        model_path=model_file,
        db=str(tmp_path / "history.db"),
        max_upload_bytes=200_000,
        store_images=tmp_path / "images",
    )


@pytest.fixture
def client(settings):
    """The real app in process (lifespan run: model loaded, store opened, batcher started)."""
    from fastapi.testclient import TestClient

    with TestClient(create_app_for(settings)) as c:
        yield c


# -- a throwaway PostgreSQL cluster ------------------------------------------------------------
def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL cluster of this test session on a Unix socket (no TCP), removed afterwards.

    Skips when Debian's ``postgresql`` package is not installed. PostgreSQL refuses to run as
    root, so as root (CI) the cluster runs as the ``postgres`` user the package creates.
    Yields a function ``url(dbname)`` that creates an empty database and returns its URL.
    """
    import shutil
    import tempfile

    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    psycopg = pytest.importorskip("psycopg")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="purenn-pg-"))
    if os.geteuid() == 0:
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    run = {"check": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "timeout": 120}
    subprocess.run(
        [*as_user, bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        **run,
    )
    options = f"-c listen_addresses='' -c unix_socket_directories={root} -p {port} -c fsync=off"
    subprocess.run(
        [*as_user, bindir / "pg_ctl", "-D", data, "-o", options, "-w", "-t", "60", "start",
         "-l", root / "log"],
        **run,
    )  # fmt: skip
    base = f"postgresql://postgres@/{{}}?host={root}&port={port}"
    counter = iter(range(10**6))

    def url(prefix: str = "purenn") -> str:
        name = f"{prefix}_{os.getpid()}_{next(counter)}"
        with psycopg.connect(base.format("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return base.format(name)

    try:
        yield url
    finally:
        subprocess.run(
            [*as_user, bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"],
            check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
        )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A new empty history database of each kind."""
    if request.param == "sqlite":
        return str(tmp_path / "db" / "history.db")
    return request.getfixturevalue("postgres_server")()
