"""What every route of ``purenn serve`` shares: the API paths, errors, the pools and the batcher.

The app (:mod:`purenn.serve.app`) and the explanation route (:mod:`purenn.serve.explain_route`)
both build on this module; neither imports the other's internals.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Annotated

from fastapi import HTTPException, Path

from purenn.serve.batcher import BatcherStopped, QueueFull

PREDICT_PATH = "/api/predict"
EXPLAIN_PATH = "/api/explain"
UPLOAD_PATHS = (PREDICT_PATH, EXPLAIN_PATH)
RETRY_AFTER_SECONDS = 1
#: The largest id the history holds: SQLite's INTEGER and PostgreSQL's BIGSERIAL are 64-bit.
MAX_DIAGNOSIS_ID = 2**63 - 1
#: A diagnosis id in a path: a larger one is a 422, never an overflow in the database driver.
DiagnosisId = Annotated[int, Path(ge=1, le=MAX_DIAGNOSIS_ID)]


def http_error(status: int, message: str, headers: dict | None = None) -> HTTPException:
    """An error the app answers as ``{"error": message}`` with ``status``."""
    return HTTPException(status_code=status, detail=message, headers=headers)


async def in_pool(pool: ThreadPoolExecutor, fn: Callable, *args):
    """``fn(*args)`` on one of ``pool``'s threads, awaited without blocking the event loop."""
    return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)


async def queued(enqueue: Callable[[], Future]):
    """The result of a batcher job that ``enqueue()`` submits; 503 if the batcher cannot take it
    (queue full: with Retry-After; or stopping)."""
    try:
        future = enqueue()
    except QueueFull:
        raise http_error(
            503, "the server is busy: try again", {"Retry-After": str(RETRY_AFTER_SECONDS)}
        ) from None
    except BatcherStopped as err:
        raise http_error(503, str(err)) from None
    return await asyncio.wrap_future(future)
