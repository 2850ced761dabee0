"""Access tokens of ``purenn serve``: the tokens file, hashing, and what each role may do.

A token is ``pnn_`` followed by 43 URL-safe characters (32 random bytes from :mod:`secrets`). The
tokens file keeps only the SHA-256 of each token (hex), never the token, so a copy of the file
lets nobody in. It is JSON, written atomically with mode 0600::

    {"version": 1, "tokens": [{"name": "alice", "role": "review", "sha256": "...",
                               "created_at": "2026-...Z", "revoked_at": null}]}

A revoked token stays in the file (with its ``revoked_at``) so ``tokens list`` shows it and its
name is not reused by mistake. The server re-reads the file when its modification time changes,
so ``tokens add`` and ``tokens revoke`` take effect on the next request, without a restart.

Roles are ordered: ``diagnose`` (predict, explain an upload) < ``review`` (also the history,
its photos and feedback) < ``admin`` (also the metrics); a role may do everything the roles
below it may.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from purenn.io import atomic_write

ROLES = ("diagnose", "review", "admin")
TOKENS_FILE = "tokens.json"
TOKEN_PREFIX = "pnn_"
FILE_VERSION = 1
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


class TokenError(ValueError):
    """A bad tokens file, name or role (names the file or the argument)."""


def role_allows(role: str, needed: str) -> bool:
    """True if a token of ``role`` may call an endpoint that needs ``needed``."""
    return ROLES.index(role) >= ROLES.index(needed)


def token_hash(token: str) -> str:
    """The SHA-256 of a token, hex (what the file keeps)."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def default_tokens_path(db: str) -> Path:
    """``tokens.json`` beside a SQLite database; for a PostgreSQL URL, in ``purenn-serve/`` of the
    working folder (the default database's folder), since the database has no folder of its own."""
    if db.startswith(("postgresql://", "postgres://")):
        return Path("purenn-serve") / TOKENS_FILE
    return Path(db).parent / TOKENS_FILE


@dataclass
class Token:
    name: str
    role: str
    sha256: str
    created_at: str
    revoked_at: str | None = None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_tokens(path: Path) -> list[Token]:
    """The tokens in ``path`` (an empty list if it does not exist)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TokenError(f"cannot read tokens file {path}: {err}") from None
    try:
        if data["version"] != FILE_VERSION:
            raise TokenError(
                f"tokens file {path} has version {data['version']}; this purenn reads version "
                f"{FILE_VERSION}"
            )
        tokens = [Token(**entry) for entry in data["tokens"]]
    except (KeyError, TypeError) as err:
        raise TokenError(f"tokens file {path} is not a purenn tokens file: {err}") from None
    for t in tokens:
        if t.role not in ROLES:
            raise TokenError(f"tokens file {path}: token {t.name!r} has unknown role {t.role!r}")
    return tokens


def write_tokens(path: Path, tokens: list[Token]) -> None:
    """Replace ``path`` atomically; readable and writable by its owner only (0600)."""
    text = json.dumps({"version": FILE_VERSION, "tokens": [asdict(t) for t in tokens]}, indent=1)

    def write(f) -> None:
        os.fchmod(f.fileno(), 0o600)
        f.write(text.encode() + b"\n")

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)


def add_token(path: Path, name: str, role: str) -> str:
    """Add a token named ``name`` with ``role`` to the file; returns the token (shown once)."""
    if not NAME_PATTERN.fullmatch(name):
        raise TokenError(
            f"a token name is 1-64 letters, digits and ._@- starting with a letter or digit. "
            f"Received: name={name!r}"
        )
    if role not in ROLES:
        raise TokenError(f"role must be one of {', '.join(ROLES)}. Received: role={role!r}")
    tokens = read_tokens(path)
    if any(t.name == name for t in tokens):
        raise TokenError(f"tokens file {path} already has a token named {name!r}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    write_tokens(path, [*tokens, Token(name, role, token_hash(token), _now())])
    return token


def revoke_token(path: Path, name: str) -> None:
    """Mark the token ``name`` revoked; it is refused from the next request on."""
    tokens = read_tokens(path)
    found = [t for t in tokens if t.name == name and t.revoked_at is None]
    if not found:
        raise TokenError(f"tokens file {path} has no active token named {name!r}")
    found[0].revoked_at = _now()
    write_tokens(path, tokens)


class TokenRegistry:
    """The server's view of a tokens file, re-read when the file changes (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._active: list[Token] = []
        self._refresh()

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self._active = [t for t in read_tokens(self.path) if t.revoked_at is None]
            self._stamp = stamp

    def authenticate(self, token: str) -> Token | None:
        """The active token whose hash matches ``token``, or None (wrong or revoked)."""
        digest = token_hash(token)
        with self._lock:
            self._refresh()
            active = self._active
        found = None
        for t in active:  # every entry compared in constant time, whichever matches
            if hmac.compare_digest(t.sha256, digest):
                found = t
        return found
