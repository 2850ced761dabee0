"""Scan an image folder: ``root/<class>/<image>`` or ``root/<split>/<class>/<image>``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from purenn.data.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})

# Folder names recognised as splits of a pre-split layout, mapped to the canonical name.
SPLIT_NAMES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}


@dataclass
class FolderScan:
    """The image files found under a root folder.

    Attributes:
        root: the folder scanned (absolute).
        files: image paths relative to ``root`` (POSIX separators), sorted by path components,
            i.e. by class then file name (by split first in a pre-split layout).
        labels: int64 array of shape ``(len(files),)``, the index of each file's class in
            ``class_names``.
        class_names: the class folder names, sorted.
        subset: per file ``"train"``, ``"val"`` or ``"test"`` for a pre-split layout, else None.
        ignored: files inside class folders whose extension is not an image extension (they are
            reported as skipped by ``build_cache``); hidden files are not listed.
    """

    root: Path
    files: list[str]
    labels: np.ndarray
    class_names: list[str]
    subset: list[str] | None = None
    ignored: list[str] = field(default_factory=list)

    def class_folder(self, path: str) -> str:
        """The class folder (relative to ``root``) that holds ``path``, a path like ``files``."""
        return "/".join(path.split("/")[: 2 if self.subset is not None else 1])


def _visible_dirs(folder: Path) -> list[str]:
    # Hidden entries (".ipynb_checkpoints", ".git") are never classes or splits.
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())


def _walk_class_folder(folder: Path, prefix: str) -> tuple[list[str], list[str]]:
    """Image and non-image files below one class folder (recursively, like torchvision).

    Returns POSIX paths ``prefix/<relative path>``; hidden files and folders are left out.
    """
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(folder).as_posix()
        base = prefix if rel == "." else f"{prefix}/{rel}"
        for name in filenames:
            if name.startswith("."):
                continue
            is_image = os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
            (images if is_image else others).append(f"{base}/{name}")
    return images, others


def _path_key(path: str) -> list[str]:
    return path.split("/")


def scan_image_folder(root: str | Path) -> FolderScan:
    """Find the images and classes under ``root``.

    Two layouts are recognised:

    * ``root/<class>/<image>`` (torchvision ``ImageFolder``); images may sit in sub-folders of
      a class folder.
    * ``root/<split>/<class>/<image>`` when every folder in ``root`` is a split name
      (``train``, ``val``/``valid``/``validation``, ``test``, any case) and ``train`` is one of
      them. Classes are the union over splits; ``subset`` records each file's split.

    Image files have the extensions jpg, jpeg, png, bmp or webp, in any case. Files directly in
    ``root`` (or in a split folder) are not part of any class and are left alone; names
    starting with ``.`` are ignored.

    Raises:
        DataError: ``root`` is missing or not a folder, has no class folders, or a class folder
            holds no image file (the message names the folder).
    """
    root = Path(root).expanduser().absolute()
    if not root.exists():
        raise DataError(f"data folder does not exist: {root}")
    if not root.is_dir():
        raise DataError(f"data path is not a folder: {root}")

    top = _visible_dirs(root)
    presplit = bool(top) and all(d.lower() in SPLIT_NAMES for d in top)
    presplit = presplit and any(SPLIT_NAMES[d.lower()] == "train" for d in top)
    # (split name or None, relative class folder, class name)
    if presplit:
        folders = [
            (SPLIT_NAMES[s.lower()], f"{s}/{c}", c) for s in top for c in _visible_dirs(root / s)
        ]
    else:
        folders = [(None, c, c) for c in top]
    if not folders:
        raise DataError(f"no class folders (root/<class>/<image>) found in {root}")

    class_names = sorted({c for _, _, c in folders})
    class_index = {c: i for i, c in enumerate(class_names)}
    entries: list[tuple[str, int, str | None]] = []
    ignored: list[str] = []
    for split, rel, cls in folders:
        images, others = _walk_class_folder(root / rel, rel)
        if not images:
            raise DataError(
                f"class folder has no image files "
                f"({', '.join(sorted(IMAGE_EXTENSIONS))}): {root / rel}"
            )
        entries.extend((path, class_index[cls], split) for path in images)
        ignored.extend(others)

    entries.sort(key=lambda e: _path_key(e[0]))
    return FolderScan(
        root=root,
        files=[path for path, _, _ in entries],
        labels=np.array([label for _, label, _ in entries], dtype=np.int64),
        class_names=class_names,
        subset=[split for _, _, split in entries] if presplit else None,
        ignored=sorted(ignored, key=_path_key),
    )


def collect_images(paths: list[str | Path]) -> list[Path]:
    """The files given, and the image files inside the folders given (recursively, sorted).

    Raises:
        DataError: a path does not exist, or a folder holds no image file.
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise DataError(f"no image files in folder {path}")
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise DataError(f"image does not exist: {path}")
    return files
