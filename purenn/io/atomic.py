"""Atomic writes: every file purenn writes appears whole under its name, or not at all.

The bytes go to a temporary file in the destination folder, which is flushed, fsynced and renamed
over the destination, so a crash at any moment leaves either the old file or the new one, never a
partial file under the real name.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

TMP_SUFFIX = ".tmp"


def atomic_write(path: str | Path, content: bytes | str | Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` so that it is never seen half-written.

    The content goes to ``.<name>.<pid>.<random>.tmp`` in the same folder, is flushed and fsynced,
    and the temporary file is renamed over ``path`` (atomic on POSIX and Windows); the folder is
    then fsynced so the rename survives a power cut. On any error the temporary file is removed
    and ``path`` keeps its previous content; an OSError about the temporary file is raised
    again (same type and errno) naming ``path``.

    Args:
        path: destination file; its folder must exist.
        content: bytes, text (written as UTF-8), or a function that writes to a binary file object.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    try:
        with open(tmp, "xb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.filename is not None and os.fspath(err.filename) == os.fspath(tmp):
            # the temporary's name means nothing to the caller: name the file being written
            raise type(err)(err.errno, err.strerror, str(path)) from err
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    if os.name == "nt":  # folders cannot be opened for fsync on Windows
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: str | Path) -> None:
    """Delete temporary files left in ``folder`` by writers killed before their rename."""
    for tmp in Path(folder).glob(f".*{TMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)
