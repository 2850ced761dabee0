"""Who may call what: bearer tokens, roles and rate limits, checked before a request's body is read.

:data:`ROUTE_ROLES` lists every endpoint with the role it needs and whether it is rate limited
(docs/SERVING.md has the same table). The page and its files, ``/healthz``, ``/readyz`` and
``/openapi.json`` are open (:data:`OPEN_PATHS`): they hold no user data, and probes need no
token. Any other path needs at least ``diagnose`` when tokens are on, so an unknown path tells
an anonymous client nothing.

When tokens are on, a request without ``Authorization: Bearer <token>``, or with a wrong or
revoked token, is answered 401; a token whose role is below the endpoint's, 403; both with
``WWW-Authenticate`` (RFC 6750). An address that sent more than :data:`FAILED_ATTEMPTS` wrong
tokens recently is answered 429 until its failures bucket refills (one per
``60 / FAILED_ATTEMPTS`` seconds). With rate limits on, predict, explain and feedback are limited
per client address and per token: 429 with ``Retry-After``. A refused request never reaches the
app, so nothing of it is stored. The name of the token a request was let in with is left in
``scope["purenn.token"]`` (None when tokens are off) for the feedback it gives.
"""

from __future__ import annotations

import re

from purenn.serve.handlers import EXPLAIN_PATH, PREDICT_PATH
from purenn.serve.limits import Receive, Scope, Send, send_json
from purenn.serve.ratelimit import RateLimiter
from purenn.serve.tokens import TokenError, TokenRegistry, role_allows

# (method, path template, role needed, rate limited)
ROUTE_ROLES = (
    ("GET", "/api/model", "diagnose", False),
    ("POST", PREDICT_PATH, "diagnose", True),
    ("POST", EXPLAIN_PATH, "diagnose", True),
    ("GET", "/api/diagnoses", "review", False),
    ("GET", "/api/diagnoses/{diagnosis_id}", "review", False),
    ("POST", "/api/diagnoses/{diagnosis_id}/feedback", "review", True),
    ("POST", "/api/diagnoses/{diagnosis_id}/explain", "review", True),
    ("GET", "/api/thumbnails/{sha256}", "review", False),
    ("GET", "/metrics", "admin", False),
)
OPEN_PATHS = ("/", "/healthz", "/readyz", "/openapi.json")
OPEN_PREFIX = "/page/"
DEFAULT_ROLE = "diagnose"  # any path not listed and not open
FAILED_ATTEMPTS = 10  # wrong tokens per address before 429 (refilled one per 6 s)
REALM = 'Bearer realm="purenn"'

_RULES = [
    (method, re.compile(re.sub(r"\{[^}]+\}", "[^/]+", path)), role, limited)
    for method, path, role, limited in ROUTE_ROLES
]


def route_rule(method: str, path: str) -> tuple[str | None, bool]:
    """(role needed or None for an open path, rate limited) of a request."""
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIX):
        return None, False
    method = "GET" if method == "HEAD" else method
    for rule_method, pattern, role, limited in _RULES:
        if pattern.fullmatch(path):
            return role, limited and rule_method == method
    return DEFAULT_ROLE, False


def bearer_token(scope: Scope) -> str | None:
    """The token of an ``Authorization: Bearer`` header, or None."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return (token.strip() or None) if scheme.lower() == "bearer" else None
    return None


class Access:
    """ASGI middleware: tokens (given a ``registry``) and rate limits (given a ``limiter``)."""

    def __init__(self, app, registry: TokenRegistry | None, limiter: RateLimiter | None) -> None:
        self.app, self.registry, self.limiter = app, registry, limiter
        self.failures = RateLimiter(FAILED_ATTEMPTS)  # wrong tokens, per address

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        role, limited = route_rule(scope["method"], scope["path"])
        address = scope["client"][0] if scope.get("client") else "unknown"
        name = None
        if self.registry is not None and role is not None:
            name, refusal = self._authenticate(scope, address, role)
            if refusal is not None:
                return await send_json(send, *refusal)
        if self.limiter is not None and limited:
            keys = [("address", address)] + ([("token", name)] if name is not None else [])
            wait = max(self.limiter.wait(key) for key in keys)
            if wait:
                message = f"too many requests: the limit is {self.limiter.per_minute} a minute"
                return await send_json(send, 429, {"error": message}, {"Retry-After": str(wait)})
            for key in keys:  # a refused request takes nothing from either bucket
                self.limiter.take(key)
        scope["purenn.token"] = name
        await self.app(scope, receive, send)

    def _authenticate(
        self, scope: Scope, address: str, role: str
    ) -> tuple[str | None, tuple | None]:
        """(the token's name, None) or (None, the (status, body, headers) of the refusal)."""
        wait = self.failures.wait(address)
        if wait:
            body = {"error": "too many failed token attempts from this address: wait"}
            return None, (429, body, {"Retry-After": str(wait)})
        token = bearer_token(scope)
        if token is None:
            body = {"error": "this server needs an access token: Authorization: Bearer <token>"}
            return None, (401, body, {"WWW-Authenticate": REALM})
        try:
            found = self.registry.authenticate(token)
        except TokenError as err:
            return None, (503, {"error": str(err)}, {})
        if found is None:
            self.failures.take(address)
            header = f'{REALM}, error="invalid_token"'
            return None, (401, {"error": "invalid or revoked token"}, {"WWW-Authenticate": header})
        if not role_allows(found.role, role):
            header = f'{REALM}, error="insufficient_scope", scope="{role}"'
            body = {"error": f"this needs a {role} token; token {found.name!r} is {found.role}"}
            return None, (403, body, {"WWW-Authenticate": header})
        return found.name, None
