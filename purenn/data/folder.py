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
        ignored_folders: ``(folder, reason)`` of the top-level folders that are not classes:
            purenn's own output (run and evaluation folders, or a ``runs/`` folder of them) and
            tool debris (``__MACOSX``, ``__pycache__``).
    """

    root: Path
    files: list[str]
    labels: np.ndarray
    class_names: list[str]
    subset: list[str] | None = None
    ignored: list[str] = field(default_factory=list)
    ignored_folders: list[tuple[str, str]] = field(default_factory=list)

    def class_folder(self, path: str) -> str:
        """The class folder (relative to ``root``) that holds ``path``, a path like ``files``.

        ``"."`` for a file directly in ``root`` (only :func:`scan_outlier_folder` lists those).
        """
        parts = path.split("/")
        depth = 2 if self.subset is not None else 1
        return "/".join(parts[:depth]) if len(parts) > depth else "."


# Folders that archivers and tools leave beside the data; never classes.
DEBRIS_FOLDERS = frozenset({"__MACOSX", "__pycache__"})
# A folder holding config.json and one of these is a purenn run folder; report.json with
# confusion.png is an evaluation folder (``purenn evaluate``).
_RUN_MARKERS = ("best.npz", "last.ckpt.npz", "metrics.csv")


def _visible_dirs(folder: Path) -> list[str]:
    # Hidden entries (".ipynb_checkpoints", ".git") are never classes or splits.
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())


def _is_purenn_output(folder: Path) -> bool:
    """A run folder (``purenn train``) or an evaluation folder (``purenn evaluate``)."""
    if (folder / "config.json").is_file():
        return any((folder / name).exists() for name in _RUN_MARKERS)
    return (folder / "report.json").is_file() and (folder / "confusion.png").is_file()


def _not_a_class(folder: Path) -> str | None:
    """Why a top-level folder is not a class (purenn output, tool debris), or None."""
    if folder.name in DEBRIS_FOLDERS:
        return "tool debris"
    if _is_purenn_output(folder):
        return "a purenn run folder"
    if any(_is_purenn_output(folder / d) for d in _visible_dirs(folder)):
        return "holds purenn run folders"
    return None


def _has_direct_images(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return any(
            e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
            for e in entries
            if not e.name.startswith(".")
        )


def _holds_class_folders(folder: Path) -> bool:
    """No image directly inside, but two or more sub-folders that hold images: a dataset root."""
    if _has_direct_images(folder):
        return False
    subs = [d for d in _visible_dirs(folder) if _not_a_class(folder / d) is None]
    with_images = [d for d in subs if _walk_class_folder(folder / d, d)[0]]
    return len(with_images) >= 2


def _check_not_one_level_too_high(root: Path, top: list[str]) -> None:
    """Refuse ``PlantVillage/{color,grayscale}/<class>/<image>`` passed as ``PlantVillage``.

    When every top-level folder holds class folders rather than images, training would learn
    to tell the top-level folders apart (e.g. colour from greyscale), not the classes.
    """
    if not top or not all(_holds_class_folders(root / d) for d in top):
        return
    examples = ", ".join(_visible_dirs(root / top[0])[:3])
    raise DataError(
        f"{root} looks one level too high: its folders ({', '.join(top)}) hold class folders "
        f"themselves ({top[0]}/ holds {examples}, ...), so they would be trained on as "
        f"{len(top)} classes; pass one of them as the data folder, e.g. {root / top[0]}"
    )


def _walk_class_folder(
    folder: Path, prefix: str, pruned: list[str] | None = None
) -> tuple[list[str], list[str]]:
    """Image and non-image files below one class folder (recursively, like torchvision).

    Returns POSIX paths ``prefix/<relative path>``; hidden files and folders are left out, and
    so are purenn's run and evaluation folders (a run started from inside a class folder),
    whose paths are appended to ``pruned``.
    """
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(folder):
        rel = Path(dirpath).relative_to(folder).as_posix()
        base = prefix if rel == "." else f"{prefix}/{rel}"
        outputs = [d for d in dirnames if _is_purenn_output(Path(dirpath) / d)]
        if pruned is not None:
            pruned.extend(f"{base}/{d}" for d in outputs)
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in outputs]
        for name in filenames:
            if name.startswith("."):
                continue
            is_image = os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
            (images if is_image else others).append(f"{base}/{name}")
    return images, others


def _path_key(path: str) -> list[str]:
    return path.split("/")


def find_images(folder: str | Path) -> list[Path]:
    """The image files below ``folder`` (recursively), sorted by path components.

    Left out, as in a class folder: hidden files and folders, and purenn's run and evaluation
    folders (their plots are PNG files too).
    """
    folder = Path(folder)
    images, _ = _walk_class_folder(folder, ".")
    return [folder / path for path in sorted(images, key=_path_key)]


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
    starting with ``.`` are ignored, and so are purenn's own run and evaluation folders and tool
    debris (listed in ``ignored_folders``). ``root`` is resolved (symbolic links, ``..``), so
    one folder always has one name (and one cache entry).

    Raises:
        DataError: ``root`` is missing or not a folder, has no class folders, a class folder
            holds no image file (the message names the folder), or every top-level folder holds
            class folders of its own (the data folder is one level too high).
    """
    root = Path(root).expanduser().resolve()
    if not root.exists():
        raise DataError(f"data folder does not exist: {root}")
    if not root.is_dir():
        raise DataError(f"data path is not a folder: {root}")

    top, ignored_folders = [], []
    for name in _visible_dirs(root):
        reason = _not_a_class(root / name)
        if reason is None:
            top.append(name)
        else:
            ignored_folders.append((name, reason))
    presplit = bool(top) and all(d.lower() in SPLIT_NAMES for d in top)
    presplit = presplit and any(SPLIT_NAMES[d.lower()] == "train" for d in top)
    if not presplit:  # split folders hold class folders by design
        _check_not_one_level_too_high(root, top)
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
        pruned: list[str] = []
        images, others = _walk_class_folder(root / rel, rel, pruned)
        ignored_folders.extend((path, "a purenn run folder") for path in pruned)
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
        ignored_folders=ignored_folders,
    )


def scan_outlier_folder(root: str | Path) -> FolderScan:
    """The images under ``root`` that are not leaves of any class, grouped by top-level folder.

    Outlier exposure (``purenn train --outliers``) and the out-of-distribution evaluation
    (``purenn evaluate --ood``) read such a folder: ``root/<group>/<image>`` (images may sit
    deeper, as in a class folder) and/or images directly in ``root`` (group ``"."``). Each group
    is a "class" of the scan, so the decode-once cache reads it like any image folder. Left out as
    in :func:`find_images`: hidden files and folders, purenn's run and evaluation folders.

    Raises:
        DataError: ``root`` is missing or not a folder, or holds no image file.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"outlier folder does not exist or is not a folder: {root}")
    images, others = _walk_class_folder(root, ".")
    # "./a.jpg" -> "a.jpg", "./background/b.jpg" -> "background/b.jpg"
    images = sorted((path[2:] for path in images), key=_path_key)
    if not images:
        raise DataError(
            f"outlier folder has no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}): {root}"
        )
    groups = [path.split("/")[0] if "/" in path else "." for path in images]
    class_names = sorted(set(groups))
    index = {name: i for i, name in enumerate(class_names)}
    return FolderScan(
        root=root,
        files=images,
        labels=np.array([index[g] for g in groups], dtype=np.int64),
        class_names=class_names,
        ignored=sorted((path[2:] for path in others), key=_path_key),
    )


def collect_images(paths: list[str | Path]) -> list[Path]:
    """The files given, and the image files inside the folders given (:func:`find_images`).

    Raises:
        DataError: a path does not exist, or a folder holds no image file.
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = find_images(path)
            if not found:
                raise DataError(f"no image files in folder {path}")
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise DataError(f"image does not exist: {path}")
    return files
