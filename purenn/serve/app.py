"""The FastAPI application of ``purenn serve``: the JSON API, the page, health and metrics.

``create_app(settings)`` builds the app and opens nothing: the model, the history database and
the inference thread are opened by the app's lifespan (on server start-up) and closed at
shutdown. While running, ``app.state`` holds ``served`` (the :class:`ServedModel`: model,
metadata, id), ``batcher`` (the :class:`MicroBatcher`; anything else that uses the model's layers,
such as an explanation endpoint, runs through ``batcher.call(job)`` so it never overlaps a forward
pass), ``store``, ``images`` and ``metrics``.

An upload is decoded (and resized and checked) in a small pool of its own as soon as its body is
read, off the event loop and off the inference thread, so the inference thread only stacks ready
arrays; its image, thumbnail and history row are written by another small pool after the answer
is computed. Both pools are bounded (two threads each: the machine's cores are for the forward
pass and these, not for dozens of threads contending for the GIL).

The OpenAPI description is at ``/openapi.json``. FastAPI's interactive ``/docs`` page loads its
scripts from a CDN, so it is turned off: everything the app serves works offline.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

import purenn
from purenn.data import DataError
from purenn.data.decode import MAX_UPLOAD_PIXELS
from purenn.inference.probabilities import top_classes
from purenn.serve.access import Access
from purenn.serve.batcher import MicroBatcher
from purenn.serve.explain_route import router as explain_router
from purenn.serve.handlers import (
    MAX_DIAGNOSIS_ID,
    PREDICT_PATH,
    UPLOAD_PATHS,
    DiagnosisId,
    http_error,
    in_pool,
    queued,
)
from purenn.serve.images import SHA256_PATTERN, ImageStore
from purenn.serve.limits import BodyLimit, HeaderLimit, RequestMetrics, SecurityHeaders
from purenn.serve.metrics import CONTENT_TYPE, Metrics
from purenn.serve.model import ServedModel
from purenn.serve.ratelimit import RateLimiter
from purenn.serve.store import NOT_A_LEAF, Diagnosis, open_store
from purenn.serve.tokens import TokenRegistry

PAGE_DIR = Path(__file__).with_name("page")
POOL_THREADS = 2  # decode workers, and writers of images and history rows
MAX_FORM_PARTS = 8  # files and fields of one multipart upload (the API reads one file); more: 400


@dataclass
class Settings:
    """What ``purenn serve`` was told; see docs/SERVING.md.

    Attributes:
        model_path: the ``.npz`` model file.
        db: a SQLite file path or a ``postgresql://`` URL.
        max_batch: most images in one forward pass (1: no batching).
        max_queue: most requests waiting for inference; more are answered 503.
        max_upload_bytes: largest request body accepted on ``/api/predict`` and
            ``/api/explain`` (other requests: ``limits.MAX_OTHER_BODY_BYTES``).
        store_images: folder for accepted uploads and thumbnails, or None to keep none.
        max_pixels: largest image (width x height) decoded; also Pillow's ``MAX_IMAGE_PIXELS``.
        tokens_file: the tokens file whose tokens every non-open endpoint needs, or None for no
            tokens (see :mod:`purenn.serve.access`).
        rate_limit: requests a minute per client address and per token on predict, explain and
            feedback; 0: no limit.
        tta: test-time augmentation views of every prediction (1: none); each request stays
            one queue entry and one row of its batch, and the batch runs ``tta`` passes.
    """

    model_path: Path
    db: str = "purenn-serve/history.db"
    max_batch: int = 32
    max_queue: int = 128
    max_upload_bytes: int = 10 * 2**20
    store_images: Path | None = None
    max_pixels: int = MAX_UPLOAD_PIXELS
    tokens_file: Path | None = None
    rate_limit: int = 0
    tta: int = 1


#: Longest feedback label taken (PlantVillage's longest class name has 45 characters).
MAX_LABEL_CHARS = 200


class Feedback(BaseModel):
    label: str = Field(max_length=MAX_LABEL_CHARS)  # one of the model's classes, or NOT_A_LEAF


def _validation_message(err: RequestValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = [str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path")]
        if loc == ["file"] and e.get("type") == "missing":
            parts.append("missing form field 'file': send multipart/form-data with the image in it")
        elif e.get("type") == "json_invalid":  # its loc is a character position
            parts.append(f"request body: not valid JSON ({e.get('ctx', {}).get('error', '')})")
        else:
            parts.append(f"{'.'.join(loc) or 'request'}: {e.get('msg')}")
    return "; ".join(parts)


def create_app(settings: Settings) -> FastAPI:
    """The app; its resources open when the server starts it (lifespan), never here."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Deliberate Pillow limits for untrusted images: its bomb check fires at our pixel limit
        # and its warning is an error, so no path decodes an oversized image (the explicit size
        # check in decode_image_bytes comes first anyway).
        Image.MAX_IMAGE_PIXELS = settings.max_pixels
        warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
        served = ServedModel.load(settings.model_path, settings.max_pixels, settings.tta)
        images = ImageStore(settings.store_images) if settings.store_images else None
        store = open_store(settings.db)
        batcher = MicroBatcher(
            served.answer, settings.max_batch, settings.max_queue, metrics.observe_batch
        )
        metrics.queue_depth = lambda: batcher.depth
        app.state.served, app.state.images, app.state.store = served, images, store
        app.state.decoders = ThreadPoolExecutor(POOL_THREADS, "purenn-decode")
        app.state.writers = ThreadPoolExecutor(POOL_THREADS, "purenn-store")
        app.state.batcher = batcher.start()
        try:
            yield
        finally:
            batcher.stop()
            app.state.decoders.shutdown()
            app.state.writers.shutdown()  # writes in flight finish before the store closes
            store.close()

    metrics = Metrics()
    app = FastAPI(
        title="purenn serve",
        version=purenn.__version__,
        description="Diagnose a leaf photo with a purenn model; history and feedback.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        form_limits={"max_files": MAX_FORM_PARTS, "max_fields": MAX_FORM_PARTS},
    )
    app.state.metrics = metrics
    registry = TokenRegistry(settings.tokens_file) if settings.tokens_file is not None else None
    limiter = RateLimiter(settings.rate_limit) if settings.rate_limit else None
    # The first added is innermost: a request passes metrics, headers, limits, access, body size.
    app.add_middleware(BodyLimit, upload_bytes=settings.max_upload_bytes, upload_paths=UPLOAD_PATHS)
    app.add_middleware(Access, registry=registry, limiter=limiter)
    app.add_middleware(HeaderLimit)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestMetrics, metrics=metrics, known_paths=UPLOAD_PATHS)

    @app.exception_handler(StarletteHTTPException)
    async def http_error_handler(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": err.detail}, err.status_code, headers=err.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception) -> JSONResponse:
        # Also logged with its traceback by the server; the client gets JSON like every error.
        return JSONResponse({"error": f"internal error: {type(err).__name__}"}, 500)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(err)}, 422)

    def record(data: bytes, image, top: list, model_id: str, verdict: dict) -> Diagnosis:
        """Keep the upload (when storing images) and add its history row (blocking).

        ``verdict``: ``{"recognized", "ood_score"}`` of the OOD test (:meth:`ServedModel.answer`).
        """
        sha = hashlib.sha256(data).hexdigest()
        stored = None
        if app.state.images is not None:
            stored = str(app.state.images.save(sha, data, image))
        return app.state.store.add(sha, stored, model_id, top, **verdict)

    def thumbnail_url(d: Diagnosis) -> str | None:
        if app.state.images is None or d.image_path is None:
            return None
        return f"/api/thumbnails/{d.image_sha256}"

    def diagnosis_json(d: Diagnosis) -> dict:
        return {**d.to_json(), "thumbnail_url": thumbnail_url(d)}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(PAGE_DIR / "index.html")

    app.mount("/page", StaticFiles(directory=PAGE_DIR), name="page")

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="The model is loaded and the database answers")
    async def readyz(request: Request) -> JSONResponse:
        state = request.app.state
        loaded = getattr(state, "served", None) is not None
        db_ok = loaded and await run_in_threadpool(state.store.ping)
        body = {"model_loaded": loaded, "database": "ok" if db_ok else "unreachable"}
        return JSONResponse(
            {"status": "ready" if db_ok else "not ready", **body}, 200 if db_ok else 503
        )

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def get_metrics() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/api/model", summary="Classes, image size, parameters, test accuracy")
    async def model_info(request: Request) -> dict:
        return request.app.state.served.describe()

    @app.post(PREDICT_PATH, summary="Diagnose one image (multipart field 'file')")
    async def predict(
        request: Request,
        file: Annotated[UploadFile, File(description="the photo (JPEG, PNG, WebP, ...)")],
        top_k: Annotated[int, Query(ge=1, le=1000, description="classes to return")] = 5,
    ) -> dict:
        start = time.perf_counter()
        state = request.app.state
        served: ServedModel = state.served
        data = await file.read()
        try:
            image = await in_pool(state.decoders, served.prepare, data)
        except DataError as err:
            raise http_error(400, f"{file.filename or 'upload'}: {err}") from None
        probabilities, verdict = await queued(lambda: state.batcher.submit(image))
        top = top_classes(probabilities, served.class_names, top_k)
        diagnosis = await in_pool(state.writers, record, data, image, top, served.model_id, verdict)
        return {
            **diagnosis_json(diagnosis),
            "latency_ms": round(1000 * (time.perf_counter() - start), 3),
        }

    @app.get("/api/diagnoses", summary="The history, newest first")
    async def list_diagnoses(
        request: Request,
        limit: Annotated[int, Query(ge=1, le=200)] = 20,
        before: Annotated[
            int | None, Query(ge=1, le=MAX_DIAGNOSIS_ID, description="ids below this one")
        ] = None,
    ) -> dict:
        rows = await run_in_threadpool(request.app.state.store.newest, limit, before)
        return {
            "items": [diagnosis_json(d) for d in rows],
            "next_before": rows[-1].id if len(rows) == limit else None,
        }

    @app.get("/api/diagnoses/{diagnosis_id}", summary="One diagnosis")
    async def get_diagnosis(request: Request, diagnosis_id: DiagnosisId) -> dict:
        found = await run_in_threadpool(request.app.state.store.get, diagnosis_id)
        if found is None:
            raise http_error(404, f"no diagnosis with id {diagnosis_id}")
        return diagnosis_json(found)

    @app.post(
        "/api/diagnoses/{diagnosis_id}/feedback",
        summary=f"What the leaf really has (a class, or {NOT_A_LEAF!r})",
    )
    async def feedback(request: Request, diagnosis_id: DiagnosisId, body: Feedback) -> dict:
        names = request.app.state.served.class_names
        if body.label not in names and body.label != NOT_A_LEAF:
            raise http_error(
                422,
                f"unknown label {body.label!r}: the model's classes are {', '.join(names)}, or "
                f"{NOT_A_LEAF!r}",
            )
        found = await run_in_threadpool(
            request.app.state.store.set_feedback,
            diagnosis_id,
            body.label,
            request.scope.get("purenn.token"),
        )
        if found is None:
            raise http_error(404, f"no diagnosis with id {diagnosis_id}")
        return diagnosis_json(found)

    @app.get("/api/thumbnails/{sha256}", summary="The image the model saw (JPEG)")
    async def thumbnail(request: Request, sha256: str) -> FileResponse:
        images = request.app.state.images
        if images is None or not SHA256_PATTERN.fullmatch(sha256):
            raise http_error(404, "no such thumbnail")
        path = images.thumbnail_path(sha256)
        if not path.is_file():
            raise http_error(404, "no such thumbnail")
        return FileResponse(path, media_type="image/jpeg")

    app.include_router(explain_router)
    return app
