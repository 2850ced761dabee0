"""Helpers of the serving tests: a tiny model file, image bytes, a server subprocess."""

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
from PIL import Image

from purenn.io import load_model, save_model
from purenn.io.header import header_metadata
from purenn.presets import build_preset

REPO = Path(__file__).resolve().parents[2]
PLANTVILLAGE = REPO / ".." / "shared" / "data" / "plantvillage"
CLASSES = ["Leaf_healthy", "Leaf_rust", "Leaf, spot (grey)"]
IMAGE_SIZE = 16
TEMPERATURE = 0.5  # the model file's calibration temperature: every answer divides by it


def make_model(
    path: Path, image_size: int = IMAGE_SIZE, seed: int = 0, preset: str = "demo-cnn"
) -> Path:
    """A preset with random weights for 3 classes, saved with the metadata predict needs."""
    model = build_preset(preset, len(CLASSES), image_size, seed=seed)
    meta = {
        "class_names": CLASSES,
        "image_size": image_size,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "temperature": TEMPERATURE,
    }
    return save_model(path, model, meta)


def make_model_with_ood(path: Path, photos: list[bytes]) -> tuple[Path, bytes, bytes]:
    """:func:`make_model`'s model with an energy OOD test whose threshold lies between the
    scores of two of ``photos``; returns ``(path, a recognized photo, one not recognized)``."""
    from purenn.data import decode_image_bytes
    from purenn.inference.recognition import OODTest, answer

    make_model(path)
    model, meta = load_model(path)
    images = np.stack([decode_image_bytes(data, IMAGE_SIZE) for data in photos])
    scores = answer(model, images, meta, OODTest("energy", np.inf, 0.95, 1.0, None)).ood_scores
    low, high = int(np.argmin(scores)), int(np.argmax(scores))
    test = OODTest("energy", float(scores[low] + scores[high]) / 2, 0.95, 1.0, None)
    save_model(path, model, {**header_metadata(meta), "ood": test.to_file()[0]})
    return path, photos[low], photos[high]


def image_bytes(seed: int, fmt: str = "PNG", size: tuple[int, int] = (40, 30)) -> bytes:
    """A distinct noisy image per seed, encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def stored_nothing(client, settings, headers: dict | None = None) -> bool:
    """No diagnosis in the history and no file under the app's image folder (``headers``: a
    review token's, when tokens are on)."""
    images = settings.store_images
    no_files = not images.exists() or not any(p.is_file() for p in images.rglob("*"))
    return no_files and client.get("/api/diagnoses", headers=headers).json()["items"] == []


def leaf_photos(n: int) -> list[Path]:
    """Up to ``n`` real leaf JPEGs from ../shared (empty when absent)."""
    if not PLANTVILLAGE.is_dir():
        return []
    return sorted(PLANTVILLAGE.glob("*/*.[jJ][pP][gG]"))[:: 1 + 2475 // max(n, 1)][:n]


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
        if not self.proc.stderr.closed:
            self.stderr_text = self.proc.stderr.read().decode(errors="replace")
            self.proc.stderr.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
