"""The history of diagnoses: one interface over SQLite (default) and PostgreSQL.

A diagnosis row holds its creation time (UTC, ISO 8601), the image's SHA-256, the stored image's
path (None when images are not stored), the model id (SHA-256 of the model file), the top-k
classes as JSON, whether the model recognized the photo as a leaf it knows and its OOD score
(both None for rows written before the model files had an OOD test, and for a model file without
one: score None, recognized True), and the feedback label, time and giver (the token's name; None
when tokens are off) once the user gives one. The feedback label is one of the model's classes or
:data:`NOT_A_LEAF`.

Both back ends keep a ``schema_version`` table with one row. Opening a database applies, in one
transaction, every migration above its version (a new database starts at 0), so a later release
adds a migration to ``_MIGRATIONS`` and older files are upgraded on their next start; a database
newer than this code is refused rather than written with the wrong schema.

SQLite runs in WAL mode (readers never block the writer) with ``synchronous=NORMAL``: a committed
row survives the server process being killed (the WAL is in the OS page cache); only a power cut
may lose the last commits. PostgreSQL is chosen by a ``postgresql://`` URL, so several server
processes on several machines share one history; psycopg is imported only then.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

SCHEMA_VERSION = 3
# The feedback label saying that the photo is not a leaf of any of the model's classes.
NOT_A_LEAF = "not a leaf"

# One list of statements per version step (index 0 takes a database from version 0 to 1).
# {id} is the auto-increment primary key, which the two dialects spell differently.
_MIGRATIONS = [
    [
        """CREATE TABLE diagnoses (
            id {id},
            created_at TEXT NOT NULL,
            image_sha256 TEXT NOT NULL,
            image_path TEXT,
            model_id TEXT NOT NULL,
            top_k TEXT NOT NULL,
            feedback_label TEXT,
            feedback_at TEXT
        )""",
        "CREATE INDEX diagnoses_feedback ON diagnoses (feedback_label)",
    ],
    ["ALTER TABLE diagnoses ADD COLUMN feedback_by TEXT"],  # the token name; NULL: tokens off
    [  # the OOD test's verdict; NULL in the rows written before it
        "ALTER TABLE diagnoses ADD COLUMN recognized BOOLEAN",
        "ALTER TABLE diagnoses ADD COLUMN ood_score DOUBLE PRECISION",
    ],
]
_ID_TYPE = {"sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT", "postgresql": "BIGSERIAL PRIMARY KEY"}

# An arbitrary constant naming purenn's migration lock among PostgreSQL advisory locks.
_MIGRATION_LOCK_KEY = 7_340_112_011

_COLUMNS = (
    "id, created_at, image_sha256, image_path, model_id, top_k, feedback_label, feedback_at, "
    "feedback_by, recognized, ood_score"
)


class StoreError(ValueError):
    """The database cannot be opened or used (names the database)."""


@dataclass
class Diagnosis:
    id: int
    created_at: str
    image_sha256: str
    image_path: str | None
    model_id: str
    top_k: list[dict]
    feedback_label: str | None
    feedback_at: str | None
    feedback_by: str | None = None
    recognized: bool | None = None
    ood_score: float | None = None

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "created_at": self.created_at,
            "image_sha256": self.image_sha256,
            "image_stored": self.image_path is not None,
            "model_id": self.model_id,
            "predictions": self.top_k,
            "recognized": self.recognized,
            "ood_score": self.ood_score,
            "feedback": self.feedback_label,
            "feedback_at": self.feedback_at,
            "feedback_by": self.feedback_by,
        }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class Store:
    """The history; subclasses supply a DB-API connection and a dialect.

    Every method is thread-safe (one connection, used under a lock) and blocking: call it from a
    worker thread, not from the event loop.
    """

    dialect = "sqlite"
    placeholder = "?"

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._conn = self._connect()
        try:
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    # -- what a back end provides ---------------------------------------------------------
    def _connect(self):
        raise NotImplementedError

    def _execute(self, sql: str, params: tuple = ()):
        """Run one statement; returns the cursor."""
        return self._conn.execute(sql.replace("?", self.placeholder), params)

    # -- schema ---------------------------------------------------------------------------
    def _migrate(self) -> None:
        with self._lock, self._transaction(write=True):
            self._lock_schema()
            self._execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = self._execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"database {self.name} has schema version {version}; this purenn knows "
                    f"versions up to {SCHEMA_VERSION} (upgrade purenn)"
                )
            for step in _MIGRATIONS[version:]:
                for statement in step:
                    self._execute(statement.format(id=_ID_TYPE[self.dialect]))
            if row is None:
                self._execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            else:
                self._execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    def schema_version(self) -> int:
        with self._lock:
            return self._execute("SELECT version FROM schema_version").fetchone()[0]

    def _transaction(self, write: bool = False):
        """A context manager: one transaction, committed on success, rolled back on error."""
        raise NotImplementedError

    def _lock_schema(self) -> None:
        """Serialise migrations between processes (SQLite's write transaction does already)."""

    # -- the interface --------------------------------------------------------------------
    def add(
        self,
        image_sha256: str,
        image_path: str | None,
        model_id: str,
        top_k: list[dict],
        recognized: bool | None = None,
        ood_score: float | None = None,
    ) -> Diagnosis:
        """Insert one diagnosis (committed when this returns) and return it with its id."""
        created = _now()
        with self._lock, self._transaction(write=True):
            row = self._execute(
                "INSERT INTO diagnoses (created_at, image_sha256, image_path, model_id, top_k, "
                "recognized, ood_score) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    created, image_sha256, image_path, model_id, json.dumps(top_k), recognized,
                    ood_score,
                ),
            ).fetchone()  # fmt: skip
        return Diagnosis(
            row[0], created, image_sha256, image_path, model_id, top_k, None, None, None,
            recognized, ood_score,
        )  # fmt: skip

    def get(self, diagnosis_id: int) -> Diagnosis | None:
        with self._lock, self._transaction():
            row = self._execute(
                f"SELECT {_COLUMNS} FROM diagnoses WHERE id = ?", (diagnosis_id,)
            ).fetchone()
        return _diagnosis(row) if row else None

    def newest(self, limit: int = 20, before: int | None = None) -> list[Diagnosis]:
        """Newest first; ``before`` (an id) gives the page after the one that ended there."""
        where, params = ("WHERE id < ?", (before, limit)) if before is not None else ("", (limit,))
        with self._lock, self._transaction():
            rows = self._execute(
                f"SELECT {_COLUMNS} FROM diagnoses {where} ORDER BY id DESC LIMIT ?", params
            ).fetchall()
        return [_diagnosis(r) for r in rows]

    def set_feedback(
        self, diagnosis_id: int, label: str, by: str | None = None
    ) -> Diagnosis | None:
        """Record the label the user gave, and the name of the token that gave it (None when
        tokens are off); None if there is no such diagnosis."""
        with self._lock, self._transaction(write=True):
            self._execute(
                "UPDATE diagnoses SET feedback_label = ?, feedback_at = ?, feedback_by = ? "
                "WHERE id = ?",
                (label, _now(), by, diagnosis_id),
            )
        return self.get(diagnosis_id)

    def with_feedback(self) -> list[Diagnosis]:
        """Every diagnosis that has feedback, oldest feedback first."""
        with self._lock, self._transaction():
            rows = self._execute(
                f"SELECT {_COLUMNS} FROM diagnoses WHERE feedback_label IS NOT NULL "
                "ORDER BY feedback_at, id"
            ).fetchall()
        return [_diagnosis(r) for r in rows]

    def ping(self) -> bool:
        """True if the database answers a query."""
        try:
            with self._lock, self._transaction():
                self._execute("SELECT 1").fetchone()
        except Exception:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _diagnosis(row) -> Diagnosis:
    # SQLite keeps a BOOLEAN as 0/1.
    recognized = None if row[9] is None else bool(row[9])
    return Diagnosis(*row[:5], json.loads(row[5]), *row[6:9], recognized, row[10])


class SQLiteStore(Store):
    """A SQLite file, created with its folder on first use."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        super().__init__(str(self.path))

    def _connect(self):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: no implicit transactions; _transaction says BEGIN itself.
            conn = sqlite3.connect(
                self.path, check_same_thread=False, timeout=30, isolation_level=None
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        except (OSError, sqlite3.Error) as err:
            raise StoreError(f"cannot open database {self.path}: {err}") from None
        return conn

    @contextlib.contextmanager
    def _transaction(self, write: bool = False):
        # IMMEDIATE takes the write lock at BEGIN, so two processes migrating or writing one
        # file wait for each other (up to the 30 s timeout) instead of failing midway.
        self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")


class PostgresStore(Store):
    """A PostgreSQL database given by a ``postgresql://`` URL (psycopg 3)."""

    dialect = "postgresql"
    placeholder = "%s"

    def __init__(self, url: str) -> None:
        self.url = url
        super().__init__(_redact(url))

    def _connect(self):
        try:
            import psycopg
        except ImportError:
            raise StoreError(
                'a postgresql:// database needs psycopg: pip install "purenn[serve]"'
            ) from None
        try:
            # autocommit: no implicit transaction; _transaction opens BEGIN/COMMIT blocks.
            return psycopg.connect(self.url, connect_timeout=10, autocommit=True)
        except psycopg.Error as err:
            raise StoreError(f"cannot connect to {self.name}: {err}") from None

    def _transaction(self, write: bool = False):
        if self._conn.closed or self._conn.broken:  # the server restarted: reconnect
            self._conn = self._connect()
        return self._conn.transaction()

    def _lock_schema(self) -> None:
        # A transaction-scoped advisory lock: servers starting together migrate one at a time.
        self._execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK_KEY,))


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    head, sep, tail = url.partition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, user = head.rpartition("//")
    return f"{scheme}//{user.split(':', 1)[0]}:***@{tail}"


def open_store(db: str | Path) -> Store:
    """SQLite for a path, PostgreSQL for a ``postgresql://`` (or ``postgres://``) URL."""
    text = str(db)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresStore(text)
    return SQLiteStore(text)
