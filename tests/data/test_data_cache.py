"""The decode-once cache: contents, reuse, invalidation, bad files, atomic builds."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import purenn.data.cache as cache_module
from purenn.data import DataError, build_cache, load_image, scan_image_folder


def entries(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir())


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path below ``folder`` with its size and mtime."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def build(root: Path, cache_dir: Path, **kwargs):
    kwargs.setdefault("image_size", 16)
    kwargs.setdefault("workers", 1)
    kwargs.setdefault("progress", False)
    return build_cache(scan_image_folder(root), cache_dir, **kwargs)


def test_contents_match_load_image_and_nothing_written_elsewhere(image_folder, tmp_path):
    before = tree(tmp_path)
    scan = scan_image_folder(image_folder)
    cache = build_cache(scan, tmp_path / "cache", image_size=16, workers=1, progress=False)

    assert isinstance(cache.images, np.memmap) and not cache.images.flags.writeable
    assert cache.images.shape == (15, 3, 16, 16) and cache.images.dtype == np.uint8
    assert cache.files == scan.files and cache.class_names == scan.class_names
    assert cache.labels.dtype == np.int64
    np.testing.assert_array_equal(cache.labels, scan.labels)
    for i, rel in enumerate(cache.files):
        np.testing.assert_array_equal(cache.images[i], load_image(image_folder / rel, 16))
    assert cache.subset is None and cache.skipped == [] and cache.image_size == 16
    assert cache.skipped_path.read_text() == ""
    assert cache.path.parent == tmp_path / "cache"
    after = tree(tmp_path)
    new = {p for p in after if not p.startswith(str(tmp_path / "cache"))}
    assert {p: after[p] for p in new} == before


def test_parallel_build_equals_serial_build(image_folder, tmp_path):
    serial = build(image_folder, tmp_path / "c1", workers=1)
    parallel = build(image_folder, tmp_path / "c2", workers=2)
    np.testing.assert_array_equal(serial.images, parallel.images)
    assert serial.files == parallel.files


def test_progress_bar_only_when_asked(image_folder, tmp_path, capfd):
    build(image_folder, tmp_path / "quiet", progress=False)
    assert capfd.readouterr().err == ""
    build(image_folder, tmp_path / "loud", progress=True)
    assert "caching images" in capfd.readouterr().err


def test_reuse_does_not_decode_again(image_folder, tmp_path, monkeypatch):
    first = build(image_folder, tmp_path / "cache")
    stamp = (first.path / "images.npy").stat()

    def fail(*args):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(cache_module, "try_decode", fail)
    second = build(image_folder, tmp_path / "cache")
    assert second.path == first.path
    assert (second.path / "images.npy").stat().st_ino == stamp.st_ino
    assert (second.path / "images.npy").stat().st_mtime_ns == stamp.st_mtime_ns
    np.testing.assert_array_equal(first.images, second.images)


def _touch(root: Path) -> None:
    path = next(root.rglob("*.png"))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def _rewrite(root: Path) -> None:
    path = next(root.rglob("*.png"))
    st = path.stat()
    path.write_bytes(path.read_bytes() + b"\0")  # new size, same mtime: still detected
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _add(root: Path) -> None:
    (root / "dog" / "new.png").write_bytes(next((root / "dog").iterdir()).read_bytes())


def _remove(root: Path) -> None:
    next((root / "dog").iterdir()).unlink()


def _rename(root: Path) -> None:
    path = next((root / "dog").iterdir())
    path.rename(path.with_name("renamed.png"))


@pytest.mark.parametrize("change", [_touch, _rewrite, _add, _remove, _rename])
def test_changed_files_invalidate_and_replace_the_old_entry(image_folder, tmp_path, change):
    old = build(image_folder, tmp_path / "cache")
    change(image_folder)
    new = build(image_folder, tmp_path / "cache")
    assert new.path != old.path
    assert entries(tmp_path / "cache") == [new.path.name]  # the stale entry is deleted
    scan = scan_image_folder(image_folder)
    assert new.files == scan.files and len(new.images) == len(scan.files)


def test_image_size_is_part_of_the_key(image_folder, tmp_path):
    small = build(image_folder, tmp_path / "cache", image_size=16)
    large = build(image_folder, tmp_path / "cache", image_size=24)
    assert small.path != large.path and large.images.shape[2:] == (24, 24)
    assert entries(tmp_path / "cache") == sorted([small.path.name, large.path.name])
    assert build(image_folder, tmp_path / "cache", image_size=16).path == small.path


def test_damaged_entry_is_rebuilt(image_folder, tmp_path):
    first = build(image_folder, tmp_path / "cache")
    expected = np.array(first.images)
    del first
    images = next((tmp_path / "cache").iterdir()) / "images.npy"
    with open(images, "r+b") as f:
        f.truncate(images.stat().st_size - 100)
    again = build(image_folder, tmp_path / "cache")
    np.testing.assert_array_equal(again.images, expected)


def test_interrupted_build_leaves_no_entry(image_folder, tmp_path, monkeypatch):
    calls = []

    def interrupted(path, size):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return load_image(path, size), None

    monkeypatch.setattr(cache_module, "try_decode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build(image_folder, tmp_path / "cache")
    assert entries(tmp_path / "cache") == []
    monkeypatch.undo()
    assert len(build(image_folder, tmp_path / "cache").files) == 15


def test_leftovers_of_dead_builds_are_removed(image_folder, tmp_path):
    cache_dir = tmp_path / "cache"
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    dead_pid = int(finished.stdout)
    host = socket.gethostname()
    dead = cache_dir / f".tmp-{host}-{dead_pid}-0a0b"
    alive = cache_dir / f".tmp-{host}-{os.getpid()}-0c0d"
    other_host = cache_dir / f".tmp-elsewhere-{dead_pid}-0e0f"
    for folder in (dead, alive, other_host):
        folder.mkdir(parents=True)
        (folder / "images.npy").write_bytes(b"partial")
    cache = build(image_folder, cache_dir)
    assert entries(cache_dir) == sorted([alive.name, other_host.name, cache.path.name])


def _add_bad_files(cls: Path, good: bytes) -> dict[str, str]:
    """Write every kind of bad file into ``cls``; return their names and expected reasons."""
    (cls / "empty.jpg").write_bytes(b"")
    (cls / "text.JPG").write_text("not an image")
    (cls / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (cls / "notes.txt").write_text("a note")
    (cls / "dangling.png").symlink_to(cls / "no such file.png")
    return {
        "empty.jpg": "empty file",
        "text.JPG": "UnidentifiedImageError",
        "truncated.jpg": "truncated",
        "notes.txt": "not an image file",
        "dangling.png": "FileNotFoundError",
    }


def test_bad_files_are_skipped_counted_and_listed(
    image_folder, tmp_path, image_writer, pixels, caplog
):
    good = image_writer(tmp_path / "good.jpg", pixels(0, 64, 64)).read_bytes()
    bad = _add_bad_files(image_folder / "dog", good)
    if os.geteuid() != 0:  # root reads any file regardless of its permissions
        locked = image_folder / "dog" / "locked.png"
        locked.write_bytes(good)
        locked.chmod(0)
        bad["locked.png"] = "PermissionError"

    with caplog.at_level(logging.WARNING, logger="purenn.data"):
        cache = build(image_folder, tmp_path / "cache")

    assert len(cache.files) == 15 and not any(f.split("/")[1] in bad for f in cache.files)
    assert {path.split("/")[1]: reason for path, reason in cache.skipped}.keys() == bad.keys()
    for path, reason in cache.skipped:
        assert path.startswith("dog/") and bad[path.split("/")[1]] in reason
    lines = cache.skipped_path.read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == [
        str(image_folder / p) for p, _ in cache.skipped
    ]
    summary = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(summary) == 1
    assert f"skipped {len(bad)} of {15 + len(bad)} files" in summary[0]
    assert str(cache.skipped_path) in summary[0]
    for i, rel in enumerate(cache.files):  # kept images stay aligned with their files
        np.testing.assert_array_equal(cache.images[i], load_image(image_folder / rel, 16))


def test_strict_makes_bad_files_an_error(image_folder, tmp_path, image_writer, pixels):
    good = image_writer(tmp_path / "good.jpg", pixels(0, 64, 64)).read_bytes()
    (image_folder / "dog" / "truncated.jpg").write_bytes(good[:200])
    with pytest.raises(DataError, match="strict.*dog/truncated.jpg"):
        build(image_folder, tmp_path / "cache", strict=True)
    build(image_folder, tmp_path / "cache")  # lenient build creates the entry ...
    with pytest.raises(DataError, match="strict.*dog/truncated.jpg"):  # ... strict reuse fails
        build(image_folder, tmp_path / "cache", strict=True)


def test_strict_rejects_non_image_files(image_folder, tmp_path):
    (image_folder / "dog" / "notes.txt").write_text("a note")
    with pytest.raises(DataError, match="dog/notes.txt.*not an image file"):
        build(image_folder, tmp_path / "cache", strict=True)


def test_class_with_no_usable_image(image_folder, tmp_path):
    broken = image_folder / "broken, (all bad)"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"")
    (broken / "b.png").write_text("not an image")
    with pytest.raises(DataError, match=r"no usable image.*broken, \(all bad\)"):
        build(image_folder, tmp_path / "cache")


@pytest.mark.parametrize("bad", [{"image_size": 4}, {"workers": 0}])
def test_bad_options(image_folder, tmp_path, bad):
    name, value = next(iter(bad.items()))
    with pytest.raises(DataError, match=f"{name}={value}"):
        build(image_folder, tmp_path / "cache", **bad)
    assert not (tmp_path / "cache").exists()


def test_presplit_layout_and_odd_file_names(tmp_path, image_writer, pixels):
    root = tmp_path / "data"
    image_writer(root / "train" / "a" / "1.png", pixels(1))
    image_writer(root / "train" / "b" / "2 (copy), é.png", pixels(2))
    image_writer(root / "val" / "a" / "3.png", pixels(3))
    (root / "val" / "a" / "zero.png").write_bytes(b"")
    raw = os.fsencode(root / "train" / "b") + b"/caf\xe9.png"  # invalid UTF-8 name
    with open(raw, "wb") as f:
        f.write((root / "train" / "a" / "1.png").read_bytes())
    cache = build(root, tmp_path / "cache")
    assert cache.subset == ["train", "train", "train", "val"]
    assert cache.labels.tolist() == [0, 1, 1, 0]
    assert cache.skipped == [("val/a/zero.png", "empty file (0 bytes)")]
    assert json.loads((cache.path / "meta.json").read_text())["files"] == cache.files
    np.testing.assert_array_equal(
        cache.images[2], load_image(raw.decode(errors="surrogateescape"), 16)
    )
    assert build(root, tmp_path / "cache").path == cache.path


def test_a_cache_folder_that_cannot_be_made_is_a_data_error(image_folder, tmp_path):
    taken = tmp_path / "cache"
    taken.write_text("a file, not a folder")
    with pytest.raises(DataError, match=f"cannot use the cache folder {taken}: File exists"):
        build_cache(scan_image_folder(image_folder), taken, 8, workers=1)
    assert taken.read_text() == "a file, not a folder"
