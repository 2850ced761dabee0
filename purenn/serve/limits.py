"""ASGI middleware (pure ASGI, no framework): the request-body size caps, the request-header
limits, the security headers of every response, and the request metrics."""

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


#: The largest body of a request that is not an upload (feedback's JSON is under 1 KB).
MAX_OTHER_BODY_BYTES = 64 * 2**10


class BodyLimit:
    """Answers 413 to a request body above its cap, without reading it all: ``upload_bytes``
    on ``upload_paths``, :data:`MAX_OTHER_BODY_BYTES` on every other path.

    A ``Content-Length`` above the cap is refused before the body is read. A body without one
    (chunked) or lying about it is counted while it streams in: at the first byte past the cap the
    app's ``receive`` raises, whatever response the app then tries to send is dropped, and 413 is
    sent instead.
    """

    def __init__(self, app, upload_bytes: int, upload_paths: tuple[str, ...]) -> None:
        self.app, self.upload_bytes, self.upload_paths = app, upload_bytes, upload_paths

    def _cap(self, path: str) -> tuple[int, str]:
        """The largest body accepted on ``path``, and what the 413 calls it."""
        if path in self.upload_paths:
            return self.upload_bytes, "upload"
        return MAX_OTHER_BODY_BYTES, "request body"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        max_bytes, what = self._cap(scope["path"])
        error = {"error": f"{what} too large: the limit is {max_bytes:,} bytes"}
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await send_json(send, 400, {"error": "invalid Content-Length header"})
            if int(length) > max_bytes:
                return await send_json(send, 413, error, {"Connection": "close"})
        received, exceeded, started = 0, False, False

        async def counting_receive() -> dict:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
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
            await send_json(send, 413, error, {"Connection": "close"})


MAX_HEADERS = 64  # request headers; a browser sends about 15
MAX_HEADER_BYTES = 16 * 2**10  # their names and values together

# The page loads only its own files: no inline script or style, no other origin, no framing.
# Photos on screen are blob: URLs of the file chosen; images come from this server.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class HeaderLimit:
    """Answers 431 to a request with more than ``MAX_HEADERS`` headers or more than
    ``MAX_HEADER_BYTES`` of them (the server's own cap on one header line comes first)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            size = sum(len(name) + len(value) for name, value in headers)
            if len(headers) > MAX_HEADERS or size > MAX_HEADER_BYTES:
                error = (
                    f"too many request headers: at most {MAX_HEADERS} of {MAX_HEADER_BYTES:,} bytes"
                )
                return await send_json(send, 431, {"error": error}, {"Connection": "close"})
        await self.app(scope, receive, send)


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every HTTP response (errors included)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


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
