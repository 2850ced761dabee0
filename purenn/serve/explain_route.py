"""``POST /api/explain``: what the model looked at in an uploaded photo (Grad-CAM or saliency).

The answer is the overlay PNG (the photo tinted by the heat map, see :mod:`purenn.explain`), the
class explained and its probability in response headers, as an image endpoint of BentoML or
TorchServe answers the image itself. The upload is checked and decoded by the code that checks
``/api/predict`` uploads (:mod:`purenn.data.decode`); nothing is stored. The explanation runs a
backward pass through the model's layers, so it runs on the inference thread through
``batcher.call`` (never during a forward pass), and the queue bound of predictions applies.
``POST /api/diagnoses/{id}/explain`` does the same for a diagnosis whose image this server stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import Response
from PIL import Image
from starlette.concurrency import run_in_threadpool

from purenn.data import DataError
from purenn.data.decode import decode_photo_bytes
from purenn.explain.methods import ExplainError
from purenn.explain.photo import class_index, explain_photo
from purenn.serve.handlers import EXPLAIN_PATH, DiagnosisId, http_error, in_pool, queued
from purenn.serve.images import ImageStore
from purenn.serve.model import ServedModel

# A larger photo is scaled down to this many pixels on its longer side for the overlay:
# the overlay is for a screen, and a 12-megapixel overlay would hold the inference thread for
# seconds (upsampling, tinting and PNG-encoding every pixel).
MAX_OVERLAY_SIDE = 1024

RESPONSE_HEADERS = {
    "X-Class": "the class explained, percent-encoded UTF-8",
    "X-Class-Index": "its index in the model's class names",
    "X-Probability": "the model's probability of that class for this photo",
    "X-Predicted": "the predicted class, percent-encoded UTF-8",
    "X-Method": "gradcam or saliency",
}
RESPONSE_DOC = (
    "The overlay PNG at the photo's size (scaled down to 1,024 pixels on its longer side when "
    "larger); the class explained and its probability are in the headers. Errors are JSON "
    '`{"error": ...}` as for /api/predict.'
)


router = APIRouter()


def decode_upload(data: bytes, served: ServedModel) -> tuple[np.ndarray, np.ndarray]:
    """Uploaded bytes -> (photo to draw on, model input).

    The model input is what ``/api/predict`` gives the model for these bytes (the same call), so
    the class and probability explained are the ones the prediction shows. The photo is the
    upload at its own size, scaled down to ``MAX_OVERLAY_SIDE`` on its longer side when larger:
    uint8 ``(H, W, 3)``.

    Raises:
        DataError: as ``/api/predict`` for the same bytes.
    """
    pixels = served.prepare(data)
    photo = decode_photo_bytes(data, served.max_pixels, served.max_side)
    height, width = photo.shape[:2]
    scale = MAX_OVERLAY_SIDE / max(height, width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = Image.fromarray(photo).resize(size, Image.Resampling.BILINEAR, reducing_gap=None)
        photo = np.asarray(image)
    return photo, pixels


PNG_RESPONSES = {
    200: {
        "content": {"image/png": {}},
        "description": RESPONSE_DOC,
        "headers": {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in RESPONSE_HEADERS.items()
        },
    }
}
Method = Annotated[
    Literal["gradcam", "saliency"], Query(description="Grad-CAM (default) or saliency")
]
Target = Annotated[
    str | None,
    Query(alias="class", description="the class to explain (default: the predicted one)"),
]


@router.post(
    EXPLAIN_PATH,
    summary="What the model looked at: the heat-map overlay as PNG (multipart field 'file')",
    response_class=Response,
    responses=PNG_RESPONSES,
)
async def explain(
    request: Request,
    file: Annotated[UploadFile, File(description="the photo (JPEG, PNG, WebP, ...)")],
    method: Method = "gradcam",
    target: Target = None,
) -> Response:
    check_target(request.app.state.served, target)
    data = await file.read()
    return await explain_bytes(request.app.state, data, file.filename or "upload", method, target)


@router.post(
    "/api/diagnoses/{diagnosis_id}/explain",
    summary="The overlay PNG of a diagnosis whose image this server stored",
    response_class=Response,
    responses=PNG_RESPONSES,
)
async def explain_diagnosis(
    request: Request, diagnosis_id: DiagnosisId, method: Method = "gradcam", target: Target = None
) -> Response:
    state = request.app.state
    check_target(state.served, target)
    found = await run_in_threadpool(state.store.get, diagnosis_id)
    if found is None:
        raise http_error(404, f"no diagnosis with id {diagnosis_id}")
    path = stored_image(state.images, found.image_path)
    if path is None:
        raise http_error(404, f"the image of diagnosis {diagnosis_id} is not stored on this server")
    data = await run_in_threadpool(path.read_bytes)
    return await explain_bytes(state, data, f"diagnosis {diagnosis_id}", method, target)


def check_target(served: ServedModel, target: str | None) -> None:
    """422 naming the model's classes when ``target`` is not one of them."""
    if target is not None:
        try:
            class_index(served.meta, target)
        except ExplainError as err:
            raise http_error(422, str(err)) from None


def stored_image(images: ImageStore | None, image_path: str | None) -> Path | None:
    """The stored file of a diagnosis when it is a file of this server's image folder."""
    if images is None or image_path is None:
        return None
    path = Path(image_path)
    # A history shared with other servers (PostgreSQL) may name files of another machine.
    inside = path.resolve().parent == images.root.resolve()
    return path if inside and path.is_file() else None


async def explain_bytes(state, data: bytes, name: str, method: str, target: str | None) -> Response:
    """Decode ``data``, explain it on the inference thread, answer the PNG with its headers."""
    served: ServedModel = state.served
    try:
        photo, pixels = await in_pool(state.decoders, decode_upload, data, served)
    except DataError as err:
        raise http_error(400, f"{name}: {err}") from None
    result = await queued(
        lambda: state.batcher.call(
            lambda: explain_photo(served.model, served.meta, photo, method, target, pixels=pixels)
        )
    )
    headers = {
        "X-Class": quote(result.class_name),
        "X-Class-Index": str(result.class_index),
        "X-Probability": repr(result.probability),
        "X-Predicted": quote(result.predicted),
        "X-Method": method,
        "Cache-Control": "no-store",
    }
    return Response(result.png, media_type="image/png", headers=headers)
