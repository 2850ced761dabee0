"""``purenn diagnoses export``: images that received feedback, as a training folder.

Each stored image with feedback is copied to ``OUT_DIR/<label>/<sha256>.<ext>``, the layout
``purenn train`` reads, so corrections from the field become training data. A photo diagnosed
several times counts once, under its most recent feedback. Files are written atomically and an
identical file already in place is left alone, so running the export again changes nothing; a
copy left under another label by an earlier export (the user changed their mind) is removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from purenn.io import atomic_write
from purenn.serve.store import open_store


class ExportError(ValueError):
    """The export cannot run (names the folder or the label)."""


@dataclass
class ExportSummary:
    written: int = 0
    unchanged: int = 0
    missing: list[str] = field(default_factory=list)  # feedback rows whose image is not stored


def _check_label(label: str) -> str:
    if not label or label.startswith(".") or "/" in label or "\\" in label or "\0" in label:
        raise ExportError(f"feedback label {label!r} cannot be a folder name")
    return label


def export_feedback(db: str | Path, out_dir: str | Path) -> ExportSummary:
    """Write every image with feedback into ``out_dir/<label>/``; see the module docstring."""
    out_dir = Path(out_dir)
    if not str(db).startswith(("postgresql://", "postgres://")) and not Path(db).is_file():
        raise ExportError(f"database does not exist: {db}")  # open_store would create it
    store = open_store(db)
    try:
        rows = store.with_feedback()  # oldest feedback first: later rows win
    finally:
        store.close()
    latest = {row.image_sha256: row for row in rows}
    summary = ExportSummary()
    for sha, row in sorted(latest.items()):
        if row.image_path is None or not Path(row.image_path).is_file():
            summary.missing.append(f"diagnosis {row.id} ({sha[:12]}): image not stored")
            continue
        source = Path(row.image_path)
        name = f"{sha}{source.suffix}"
        folder = out_dir / _check_label(row.feedback_label)
        target = folder / name
        data = source.read_bytes()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ExportError(f"cannot create {folder}: {err.strerror or err}") from None
        if target.is_file() and target.read_bytes() == data:
            summary.unchanged += 1
        else:
            atomic_write(target, data)
            summary.written += 1
        for stale in out_dir.glob(f"*/{name}"):
            if stale.parent != folder:
                stale.unlink()
    return summary
