"""Folder scanning: layouts, names, extensions, and the errors for unusable folders."""

from __future__ import annotations

import os

import numpy as np
import pytest

from purenn.data import DataError, build_cache, scan_image_folder, scan_outlier_folder


def test_imagefolder_layout_odd_names_and_extensions(tmp_path, image_writer, pixels):
    root = tmp_path / "root"
    layout = {
        "b class": ["IMG 1.JPG", "z(2),b.jpeg", "sub/deep.png"],
        "a,(x)": ["ü ñ.PNG", "x.bmp", "y.WebP"],
        "植物 é": ["leaf.jpg"],
    }
    for cls, names in layout.items():
        for name in names:
            image_writer(root / cls / name, pixels(0))
    (root / "b class" / "notes.txt").write_text("not an image")
    (root / "b class" / ".DS_Store").write_bytes(b"\0")
    (root / ".ipynb_checkpoints").mkdir()
    image_writer(root / ".ipynb_checkpoints" / "hidden.png", pixels(1))
    (root / "MANIFEST.csv").write_text("file\n")

    scan = scan_image_folder(root)

    assert scan.root == root
    assert scan.class_names == ["a,(x)", "b class", "植物 é"]
    assert scan.files == [
        "a,(x)/x.bmp",
        "a,(x)/y.WebP",
        "a,(x)/ü ñ.PNG",
        "b class/IMG 1.JPG",
        "b class/sub/deep.png",
        "b class/z(2),b.jpeg",
        "植物 é/leaf.jpg",
    ]
    assert scan.labels.dtype == np.int64
    assert scan.labels.tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert scan.subset is None
    assert scan.ignored == ["b class/notes.txt"]


def test_presplit_layout(tmp_path, image_writer, pixels):
    root = tmp_path / "root"
    for split, cls, name in [
        ("train", "healthy", "1.png"),
        ("train", "sick", "2.png"),
        ("valid", "sick", "3.png"),
        ("Test", "healthy", "4.png"),
        ("Test", "rare", "5.png"),
    ]:
        image_writer(root / split / cls / name, pixels(0))

    scan = scan_image_folder(root)

    assert scan.class_names == ["healthy", "rare", "sick"]
    assert scan.files == [
        "Test/healthy/4.png",
        "Test/rare/5.png",
        "train/healthy/1.png",
        "train/sick/2.png",
        "valid/sick/3.png",
    ]
    assert scan.labels.tolist() == [0, 1, 0, 2, 2]
    assert scan.subset == ["test", "test", "train", "train", "val"]
    assert scan.class_folder("Test/rare/5.png") == "Test/rare"


def test_split_names_without_train_are_classes(tmp_path, image_writer, pixels):
    image_writer(tmp_path / "val" / "a.png", pixels(0))
    image_writer(tmp_path / "test" / "b.png", pixels(0))
    scan = scan_image_folder(tmp_path)
    assert scan.class_names == ["test", "val"]
    assert scan.subset is None


def test_undecodable_file_name_bytes(tmp_path, image_writer, pixels):
    folder = tmp_path / "cls"
    image_writer(folder / "ok.png", pixels(0))
    raw = os.fsencode(folder) + b"/caf\xe9.png"  # Latin-1 byte, invalid UTF-8
    with open(raw, "wb") as f:
        f.write((folder / "ok.png").read_bytes())
    scan = scan_image_folder(tmp_path)
    assert len(scan.files) == 2
    assert os.fsencode(scan.root / scan.files[0]) == raw


def test_root_missing(tmp_path):
    with pytest.raises(DataError, match="does not exist.*nowhere"):
        scan_image_folder(tmp_path / "nowhere")


def test_root_is_a_file(tmp_path):
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(DataError, match="not a folder.*file.png"):
        scan_image_folder(tmp_path / "file.png")


@pytest.mark.parametrize("content", ["empty", "files only", "hidden folder only"])
def test_root_without_class_folders(tmp_path, image_writer, pixels, content):
    if content == "files only":
        image_writer(tmp_path / "loose.png", pixels(0))
    if content == "hidden folder only":
        image_writer(tmp_path / ".hidden" / "a.png", pixels(0))
    with pytest.raises(DataError, match=f"no class folders.*{tmp_path}"):
        scan_image_folder(tmp_path)


@pytest.mark.parametrize("content", ["nothing", "text file", "hidden image"])
def test_class_folder_without_images(tmp_path, image_writer, pixels, content):
    image_writer(tmp_path / "good" / "a.png", pixels(0))
    empty = tmp_path / "empty, (class)"
    empty.mkdir()
    if content == "text file":
        (empty / "readme.txt").write_text("hi")
    if content == "hidden image":
        image_writer(empty / ".a.png", pixels(0))
    with pytest.raises(DataError, match=r"no image files.*empty, \(class\)"):
        scan_image_folder(tmp_path)


def test_presplit_layout_whose_splits_each_hold_several_classes(tmp_path, image_writer, pixels):
    root = tmp_path / "root"
    for split in ("train", "test"):
        for cls in ("healthy", "sick"):
            image_writer(root / split / cls / "1.png", pixels(0))
    scan = scan_image_folder(root)
    assert scan.class_names == ["healthy", "sick"]
    assert scan.subset == ["test", "test", "train", "train"]


def test_presplit_class_folder_without_images(tmp_path, image_writer, pixels):
    image_writer(tmp_path / "train" / "a" / "1.png", pixels(0))
    (tmp_path / "val" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no image files.*val/a"):
        scan_image_folder(tmp_path)


def test_outlier_folder_groups_by_top_level_folder_and_takes_loose_images(
    tmp_path, image_writer, pixels
):
    root = tmp_path / "photos"
    image_writer(root / "background" / "b1.png", pixels(0))
    image_writer(root / "background" / "deeper" / "b2.jpg", pixels(1))
    image_writer(root / "imagenet" / "cat.png", pixels(2))
    image_writer(root / "loose.png", pixels(3))
    image_writer(root / ".hidden" / "x.png", pixels(4))
    (root / "notes.txt").write_text("not an image")
    scan = scan_outlier_folder(root)
    assert scan.files == [
        "background/b1.png", "background/deeper/b2.jpg", "imagenet/cat.png", "loose.png",
    ]  # fmt: skip
    assert scan.class_names == [".", "background", "imagenet"]
    assert scan.labels.tolist() == [1, 1, 2, 0]
    assert scan.ignored == ["notes.txt"]
    assert [scan.class_folder(f) for f in scan.files] == [
        "background", "background", "imagenet", ".",
    ]  # fmt: skip
    # The decode cache reads it like an image folder; an unreadable loose photo is skipped.
    (root / "broken.png").write_bytes(b"not a png")
    cache = build_cache(scan_outlier_folder(root), tmp_path / "cache", 8, workers=1, progress=False)
    assert len(cache) == 4 and sorted(rel for rel, _ in cache.skipped) == [
        "broken.png",
        "notes.txt",
    ]


def test_outlier_folder_missing_or_without_images(tmp_path):
    with pytest.raises(DataError, match="outlier folder does not exist"):
        scan_outlier_folder(tmp_path / "nowhere")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match="outlier folder has no image files"):
        scan_outlier_folder(tmp_path / "empty")
