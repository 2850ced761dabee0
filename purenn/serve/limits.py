"""ASGI middleware: the upload size cap and the request metrics (pure ASGI, no framework)."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable

from purenn.serve.metrics import Metrics

Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


async def send_json(send: Send, status: int, body: dict, headers: dict | None = None) -> None:
    """A complete JSON response sent straight through ASGI."""
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


class _TooLarge(Exception):
    pass


class UploadLimit:
    """Answers 413 to a request body above ``max_bytes`` on ``paths``, without reading it all.

    A ``Content-Length`` above the cap is refused before the body is read. A body without one
    (chunked) or lying about it is counted while it streams in: at the first byte past the cap the
    app's ``receive`` raises, whatever response the app then tries to send is dropped, and 413 is
    sent instead.
    """

    def __init__(self, app, max_bytes: int, paths: tuple[str, ...]) -> None:
        self.app, self.max_bytes, self.paths = app, max_bytes, paths

    def _error(self) -> dict:
        return {"error": f"upload too large: the limit is {self.max_bytes:,} bytes"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await send_json(send, 400, {"error": "invalid Content-Length header"})
            if int(length) > self.max_bytes:
                return await send_json(send, 413, self._error(), {"Connection": "close"})
        received, exceeded, started = 0, False, False

        async def counting_receive() -> dict:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _TooLarge
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal started
            if exceeded:
                return  # the app's answer to a body it could not read: replaced by 413 below
            started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _TooLarge:
            pass
        if exceeded and not started:
            await send_json(send, 413, self._error(), {"Connection": "close"})


class RequestMetrics:
    """Counts every HTTP request by method, route template and status, and times it.

    The endpoint label is the matched route's template (``/api/diagnoses/{diagnosis_id}``), so
    ids never multiply the series; a request answered before routing (an upload refused by its
    Content-Length) is labelled by its path when that is one of ``known_paths``.
    """

    def __init__(self, app, metrics: Metrics, known_paths: tuple[str, ...] = ()) -> None:
        self.app, self.metrics, self.known_paths = app, metrics, known_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def recording_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or (
                scope["path"] if scope["path"] in self.known_paths else "unmatched"
            )
            self.metrics.observe_request(
                scope["method"], endpoint, status, time.perf_counter() - start
            )
