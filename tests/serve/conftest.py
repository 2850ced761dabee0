"""Fixtures for the serving tests: a tiny model file, image bytes, an in-process app, a server."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from purenn.presets import build_preset
from purenn.serialization import save_model

pytest.importorskip("fastapi")

REPO = Path(__file__).resolve().parents[2]
PLANTVILLAGE = REPO / ".." / "shared" / "data" / "plantvillage"
CLASSES = ["Leaf_healthy", "Leaf_rust", "Leaf, spot (grey)"]
IMAGE_SIZE = 16


def make_model(path: Path, image_size: int = IMAGE_SIZE, seed: int = 0) -> Path:
    """demo-cnn with random weights for 3 classes, saved with the metadata predict needs."""
    model = build_preset("demo-cnn", len(CLASSES), image_size, seed=seed)
    meta = {"class_names": CLASSES, "image_size": image_size, "mean": [0.5] * 3, "std": [0.25] * 3}
    return save_model(path, model, meta)


def image_bytes(seed: int, fmt: str = "PNG", size: tuple[int, int] = (40, 30)) -> bytes:
    """A distinct noisy image per seed, encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def leaf_photos(n: int) -> list[Path]:
    """Up to ``n`` real leaf JPEGs from ../shared (empty when absent)."""
    if not PLANTVILLAGE.is_dir():
        return []
    return sorted(PLANTVILLAGE.glob("*/*.[jJ][pP][gG]"))[:: 1 + 2475 // max(n, 1)][:n]


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


def create_app_for(settings):
    from purenn.serve.app import create_app

    return create_app(settings)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``purenn serve`` in a subprocess on a loopback port; stops (or is killed) by the test."""

    def __init__(self, model: Path, db: str, *extra: str, timeout: float = 60.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        args = [sys.executable, "-m", "purenn", "serve", str(model), "--db", db, "--quiet"]
        args += ["--port", str(self.port), "--threads", "1", *extra]
        self.proc = subprocess.Popen(
            args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"server not ready within {timeout} s")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.proc.stderr.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


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
