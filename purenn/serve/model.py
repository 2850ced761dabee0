"""The model a server answers with: weights, metadata, identity and image preparation."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from purenn.data import decode_image_bytes
from purenn.data.decode import MAX_SIDE, MAX_UPLOAD_PIXELS
from purenn.inference.probabilities import INFERENCE_KEYS
from purenn.inference.recognition import OODTest, answer, read_ood_test
from purenn.inference.tta import check_views
from purenn.io import load_model, model_file
from purenn.nn.sequential import Sequential

REPORT_FILE = "report.json"  # written by ``purenn train`` beside best.npz (the test split)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ServedModel:
    """A loaded model file: what ``/api/model`` describes and what the batcher runs.

    ``model_id`` is the SHA-256 of the model file, so two servers with the same file give the
    same id and a history row names exactly the weights that produced it. ``tta``: the
    test-time augmentation views every answer averages (1: none; see
    :mod:`purenn.inference.tta`).
    """

    path: Path
    model: Sequential
    meta: dict
    model_id: str
    test_accuracy: float | None = None
    max_pixels: int = MAX_UPLOAD_PIXELS
    max_side: int = MAX_SIDE
    ood_test: OODTest | None = None
    tta: int = 1

    @classmethod
    def load(
        cls, path: str | Path, max_pixels: int = MAX_UPLOAD_PIXELS, tta: int = 1
    ) -> ServedModel:
        """Read ``path`` (never with pickle); ModelFileError if it cannot classify images."""
        tta = check_views(tta)
        path = model_file(path)
        model, meta = load_model(path, require=INFERENCE_KEYS)
        accuracy, ood_test = _test_accuracy(path), read_ood_test(path, meta)
        return cls(
            path, model, meta, file_sha256(path), accuracy, max_pixels, ood_test=ood_test, tta=tta
        )

    @property
    def class_names(self) -> list[str]:
        return self.meta["class_names"]

    @property
    def image_size(self) -> int:
        return self.meta["image_size"]

    def describe(self) -> dict:
        """The JSON of ``GET /api/model``."""
        return {
            "model_id": self.model_id,
            "file": self.path.name,
            "class_names": self.class_names,
            "image_size": self.image_size,
            "parameters": self.model.num_parameters,
            "test_accuracy": self.test_accuracy,
            "ood_test": None if self.ood_test is None else self.ood_test.score,
            "tta": self.tta,
        }

    def prepare(self, data: bytes) -> np.ndarray:
        """Uploaded bytes -> uint8 ``(3, S, S)`` as training decoded files; DataError if bad."""
        return decode_image_bytes(data, self.image_size, self.max_pixels, self.max_side)

    def answer(self, images: np.ndarray) -> list[tuple[np.ndarray, dict]]:
        """uint8 ``(N, 3, S, S)`` -> per image its float64 ``(K,)`` probabilities and
        ``{"recognized", "ood_score"}`` (``tta`` forward passes of the batch, one per view, so
        a request stays one row of one batch; see :func:`purenn.inference.recognition.answer`)."""
        answers = answer(self.model, images, self.meta, self.ood_test, self.tta)
        return [(answers.probabilities[i], answers.verdict(i)) for i in range(len(images))]


def _test_accuracy(model_path: Path) -> float | None:
    """The test accuracy in the run folder's report.json beside the model, if there is one."""
    try:
        report = json.loads((model_path.parent / REPORT_FILE).read_text(encoding="utf-8"))
        accuracy = report["accuracy"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(accuracy) if isinstance(accuracy, (int, float)) else None
