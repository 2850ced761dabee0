"""Decode-once cache: every image decoded and resized into one memory-mapped uint8 ``.npy``.

Layout inside ``cache_dir``::

    <key hash>/images.npy    uint8 (N, 3, S, S), opened with mmap_mode="r"
    <key hash>/meta.json     key, root, image size, kept files, labels, classes, subsets, skipped
    <key hash>/skipped.txt   one "path<TAB>reason" line per skipped file (absolute path)
    .tmp-<host>-<pid>-<hex>/ a build in progress, renamed to <key hash> when complete

The key hashes the root, every file's relative path, size and mtime (ns), the image size, the
cache format and the Pillow version; any change gives a new key, hence a rebuild. A build writes
into a temporary folder and renames it only once all files are written and synced, so an
interrupted build never leaves a partial entry under a key's name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import numpy as np
import PIL
from tqdm import tqdm

from purenn.checks import check_int
from purenn.data.decode import check_image_size, try_decode
from purenn.data.errors import DataError
from purenn.data.folder import FolderScan

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
_TMP_PREFIX = ".tmp-"
_NOT_IMAGE = "not an image file (extension)"


@dataclass
class ImageCache:
    """A built cache.

    Attributes:
        images: read-only uint8 memmap of shape ``(N, 3, S, S)`` (NCHW, RGB).
        labels: int64 array of shape ``(N,)``.
        files: the N kept files, relative to ``root`` (POSIX), in scan order.
        class_names: sorted class names; ``labels`` index into them.
        subset: per kept file ``"train"``/``"val"``/``"test"`` (pre-split layout) or None.
        skipped: ``(relative path, reason)`` of every file left out.
        skipped_path: the ``skipped.txt`` listing them (absolute paths).
        image_size: S.
        root: the scanned folder.
        path: the cache entry folder.
        key: SHA-256 hex digest of the cache key.
    """

    images: np.ndarray
    labels: np.ndarray
    files: list[str]
    class_names: list[str]
    subset: list[str] | None
    skipped: list[tuple[str, str]]
    skipped_path: Path
    image_size: int
    root: Path
    path: Path
    key: str

    def __len__(self) -> int:
        return len(self.files)

    @classmethod
    def open(cls, entry: str | Path) -> ImageCache:
        """Open a committed cache entry folder (raises OSError/ValueError/KeyError if broken)."""
        entry = Path(entry)
        meta = json.loads((entry / "meta.json").read_text(encoding="ascii"))
        size, files = meta["image_size"], meta["files"]
        images = np.load(entry / "images.npy", mmap_mode="r")
        if images.shape != (len(files), 3, size, size) or images.dtype != np.uint8:
            raise ValueError(
                f"cache images {images.shape} {images.dtype} do not match {entry / 'meta.json'}"
            )
        return cls(
            images=images,
            labels=np.array(meta["labels"], dtype=np.int64),
            files=files,
            class_names=meta["class_names"],
            subset=meta["subset"],
            skipped=[(path, reason) for path, reason in meta["skipped"]],
            skipped_path=entry / "skipped.txt",
            image_size=size,
            root=Path(meta["root"]),
            path=entry,
            key=meta["key"],
        )


def _cache_key(scan: FolderScan, image_size: int) -> str:
    def stat(rel: str) -> list:
        try:
            st = os.stat(scan.root / rel)
        except OSError:  # vanished since the scan: decoding will report it
            return [rel, -1, -1]
        return [rel, st.st_size, st.st_mtime_ns]

    key = {
        "format": CACHE_FORMAT,
        "pillow": PIL.__version__,
        "image_size": image_size,
        "root": str(scan.root),
        "presplit": scan.subset is not None,
        "class_names": scan.class_names,
        "files": [stat(rel) for rel in scan.files],
        "ignored": scan.ignored,
    }
    # ensure_ascii escapes undecodable file-name bytes (surrogates) instead of failing.
    text = json.dumps(key, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _decode_all(paths: list[str], image_size: int, workers: int, progress: bool) -> Iterator[tuple]:
    """``try_decode`` results for ``paths``, in order, from ``workers`` processes."""
    bar = dict(total=len(paths), desc="caching images", unit="img", disable=not progress)
    if workers == 1:
        yield from tqdm(map(try_decode, paths, repeat(image_size)), **bar)
        return
    pool = ProcessPoolExecutor(max_workers=workers)
    try:
        chunksize = max(1, min(64, len(paths) // (8 * workers)))
        results = pool.map(try_decode, paths, repeat(image_size), chunksize=chunksize)
        yield from tqdm(results, **bar)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _npy_header(f, shape: tuple[int, ...]) -> int:
    np.lib.format.write_array_header_1_0(
        f, {"descr": "|u1", "fortran_order": False, "shape": shape}
    )
    return f.tell()


def _write_entry(
    scan: FolderScan, key: str, image_size: int, workers: int, progress: bool, tmp: Path
) -> None:
    """Decode every file of ``scan`` into the entry folder ``tmp``."""
    s = image_size
    abs_paths = [str(scan.root / rel) for rel in scan.files]
    kept: list[int] = []
    skipped = [(rel, _NOT_IMAGE) for rel in scan.ignored]
    with open(tmp / "images.npy", "wb") as f:
        # Rows are appended in scan order, skipping bad files, so the final count is known only
        # at the end; NumPy pads the header so that rewriting it with a smaller first dimension
        # keeps its length (checked below).
        offset = _npy_header(f, (len(abs_paths), 3, s, s))
        # closing(): on an error here the pool stops now, not when the traceback is freed.
        with closing(_decode_all(abs_paths, s, workers, progress)) as results:
            for i, (image, reason) in enumerate(results):
                if image is None:
                    skipped.append((scan.files[i], reason))
                else:
                    f.write(image.tobytes())
                    kept.append(i)
        f.seek(0)
        if _npy_header(f, (len(kept), 3, s, s)) != offset:
            raise RuntimeError("numpy .npy header changed length when rewritten")
        f.flush()
        os.fsync(f.fileno())

    skipped.sort(key=lambda item: item[0].split("/"))
    meta = {
        "key": key,
        "root": str(scan.root),
        "image_size": s,
        "class_names": scan.class_names,
        "files": [scan.files[i] for i in kept],
        "labels": scan.labels[kept].tolist(),
        "subset": None if scan.subset is None else [scan.subset[i] for i in kept],
        "skipped": skipped,
    }
    (tmp / "meta.json").write_text(json.dumps(meta, ensure_ascii=True), encoding="ascii")
    lines = "".join(f"{scan.root / rel}\t{' '.join(reason.split())}\n" for rel, reason in skipped)
    (tmp / "skipped.txt").write_text(lines, encoding="utf-8", errors="surrogateescape")
    for name in ("meta.json", "skipped.txt"):
        _fsync(tmp / name)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_dead_builds(cache_dir: Path) -> None:
    """Delete temporary folders left by interrupted builds of this host whose process is gone."""
    host = socket.gethostname()
    for entry in cache_dir.glob(f"{_TMP_PREFIX}*"):
        owner, _, rest = entry.name[len(_TMP_PREFIX) :].rpartition("-")
        owner_host, _, pid = owner.rpartition("-")
        if owner_host == host and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _remove_stale_entries(cache_dir: Path, keep: Path, root: Path, image_size: int) -> None:
    """Delete older entries of the same root and image size: their files have changed."""
    for entry in cache_dir.iterdir():
        if entry == keep or entry.name.startswith(".") or not (entry / "meta.json").is_file():
            continue
        try:
            meta = json.loads((entry / "meta.json").read_text(encoding="ascii"))
            stale = meta["root"] == str(root) and meta["image_size"] == image_size
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if stale:
            shutil.rmtree(entry, ignore_errors=True)


def _open_if_valid(entry: Path, key: str) -> ImageCache | None:
    if not entry.is_dir():
        return None
    try:
        cache = ImageCache.open(entry)
        if cache.key == key:
            return cache
    except (OSError, ValueError, KeyError, TypeError):
        pass
    shutil.rmtree(entry, ignore_errors=True)  # damaged by hand: rebuild
    return None


def _check_usable(cache: ImageCache, scan: FolderScan, strict: bool) -> None:
    if strict and cache.skipped:
        listed = "; ".join(f"{path} ({reason})" for path, reason in cache.skipped[:5])
        more = f" and {len(cache.skipped) - 5} more" if len(cache.skipped) > 5 else ""
        raise DataError(
            f"{len(cache.skipped)} unusable file(s) under {scan.root} (strict mode): "
            f"{listed}{more}; full list in {cache.skipped_path}"
        )
    used = {scan.class_folder(rel) for rel in cache.files}
    empty = sorted({scan.class_folder(rel) for rel in scan.files} - used)
    if empty:
        raise DataError(
            f"class folder(s) with no usable image (every image file was skipped, reasons in "
            f"{cache.skipped_path}): {', '.join(str(scan.root / folder) for folder in empty)}"
        )


def _default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def build_cache(
    scan: FolderScan,
    cache_dir: str | Path,
    image_size: int = 128,
    workers: int | None = None,
    strict: bool = False,
    progress: bool = True,
    listing: str | Path | None = None,
) -> ImageCache:
    """Decode and resize every image of ``scan`` once, or reuse the cache built before.

    Args:
        scan: from ``scan_image_folder``.
        cache_dir: folder for cache entries (created); nothing is written elsewhere.
        image_size: side S of the square images (>= 8).
        workers: decoding processes (default: the usable CPU count; 1 decodes in-process).
        strict: raise instead of skipping unreadable, truncated, empty or non-image files.
        progress: show a progress bar on stderr while building.
        listing: the list of skipped files that the warning names (default: the entry's
            ``skipped.txt``; a training run names the copy in its run folder).

    Skipped files are listed in ``skipped.txt`` in the entry folder, and a one-line summary is
    logged as a warning (``logging`` prints it to stderr when unconfigured), on every call.

    Returns:
        the ``ImageCache``; ``images`` has shape ``(N, 3, S, S)``, uint8.

    Raises:
        DataError: bad ``image_size`` or ``workers``; a ``cache_dir`` that cannot be a folder;
            with ``strict``, any skipped file; a class folder left with no usable image (names
            the folder).
    """
    s = check_image_size(image_size)
    if workers is None:
        workers = _default_workers()
    workers = check_int(workers, "workers", 1, DataError)
    cache_dir = Path(cache_dir).expanduser().resolve()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file of that name, no permission, ...
        raise DataError(f"cannot use the cache folder {cache_dir}: {err.strerror or err}") from None

    key = _cache_key(scan, s)
    entry = cache_dir / key[:24]
    cache = _open_if_valid(entry, key)
    if cache is None:
        _remove_dead_builds(cache_dir)
        tmp = (
            cache_dir / f"{_TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        )
        tmp.mkdir()
        try:
            _write_entry(scan, key, s, min(workers, len(scan.files)), progress, tmp)
            try:
                os.rename(tmp, entry)
            except OSError:
                if not entry.is_dir():
                    raise
                shutil.rmtree(tmp)  # a concurrent build of the same key finished first
            _fsync(cache_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _remove_stale_entries(cache_dir, entry, scan.root, s)
        cache = ImageCache.open(entry)
    else:
        logger.info("reusing image cache %s", entry)

    if cache.skipped:
        logger.warning(
            "skipped %d of %d files under %s (unreadable, truncated, empty or not images); "
            "list: %s",
            len(cache.skipped),
            len(cache.skipped) + len(cache),
            scan.root,
            listing or cache.skipped_path,
        )
    _check_usable(cache, scan, strict)
    return cache


@dataclass
class CacheEntry:
    """One committed entry of a cache folder, as ``purenn cache list`` shows it.

    Attributes:
        path: the entry folder. root: the image folder it was built from.
        image_size: S. images: decoded images held. bytes: disk space of the entry.
    """

    path: Path
    root: Path
    image_size: int
    images: int
    bytes: int


def _entry_size(entry: Path) -> int:
    return sum(f.stat().st_size for f in entry.iterdir() if f.is_file())


def list_entries(cache_dir: str | Path) -> list[CacheEntry]:
    """The committed entries of ``cache_dir`` (none if it does not exist), by root then size.

    Folders without a readable ``meta.json`` and builds in progress are not entries.
    """
    cache_dir = Path(cache_dir).expanduser().resolve()
    if not cache_dir.is_dir():
        return []
    entries = []
    for entry in cache_dir.iterdir():
        if entry.name.startswith(".") or not (entry / "meta.json").is_file():
            continue
        try:
            meta = json.loads((entry / "meta.json").read_text(encoding="ascii"))
            root, size, count = Path(meta["root"]), int(meta["image_size"]), len(meta["files"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        entries.append(CacheEntry(entry, root, size, count, _entry_size(entry)))
    return sorted(entries, key=lambda e: (str(e.root), e.image_size))


def remove_entries(cache_dir: str | Path, root: str | Path | None = None) -> list[CacheEntry]:
    """Delete the entries of ``cache_dir`` (only those built from ``root``, if given).

    Only entry folders are removed (and temporary folders of builds whose process is gone),
    never other files that happen to be in ``cache_dir``. Returns the removed entries.
    """
    cache_dir = Path(cache_dir).expanduser().resolve()
    if not cache_dir.is_dir():
        return []
    _remove_dead_builds(cache_dir)
    wanted = None if root is None else Path(root).expanduser().resolve()
    removed = [e for e in list_entries(cache_dir) if wanted is None or e.root == wanted]
    for entry in removed:
        shutil.rmtree(entry.path, ignore_errors=True)
    return removed
