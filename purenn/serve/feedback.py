"""``purenn diagnoses export``: images that received feedback, as a training folder.

Each stored image with feedback is copied to ``OUT_DIR/<label>/<sha256>.<ext>``, the layout
``purenn train`` reads, so corrections from the field become training data. A photo diagnosed
several times counts once, under its most recent feedback. Files are written atomically and an
identical file already in place is left alone, so running the export again changes nothing; a
copy left under another label by an earlier export (the user changed their mind) is removed.

Photos whose feedback is "not a leaf" (:data:`purenn.serve.store.NOT_A_LEAF`) are no class: they
are left out of ``OUT_DIR``, and with ``outliers_dir`` copied to ``outliers_dir/<sha256>.<ext>``,
the folder ``purenn train --outliers`` takes (outlier exposure). A photo that changed label moves:
its copy under the other label (or among the outliers) is removed.

Which feedback counts can be narrowed: ``by`` keeps only feedback given with the named tokens;
``min_agree=K`` keeps a photo only when at least K distinct reviewers (token names; feedback given
without tokens has none and does not count) gave it the same label, and more reviewers gave that
label than any other. Each diagnosis row holds the latest feedback on it, so reviewers agree over
the diagnoses of one photo (by SHA-256), each reviewer counted once, with their latest label.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from purenn.io import atomic_write
from purenn.serve.store import NOT_A_LEAF, Diagnosis, open_store


class ExportError(ValueError):
    """The export cannot run (names the folder or the label)."""


@dataclass
class ExportSummary:
    written: int = 0
    unchanged: int = 0
    missing: list[str] = field(default_factory=list)  # feedback rows whose image is not stored
    not_agreed: int = 0  # photos left out by min_agree
    outliers: int = 0  # "not a leaf" photos written to (or already in) outliers_dir
    outliers_left_out: int = 0  # "not a leaf" photos not written (no outliers_dir)


def _check_label(label: str) -> str:
    if not label or label.startswith(".") or "/" in label or "\\" in label or "\0" in label:
        raise ExportError(f"feedback label {label!r} cannot be a folder name")
    return label


def agreed_labels(
    rows: list[Diagnosis], by: list[str] | None = None, min_agree: int | None = None
) -> tuple[dict[str, Diagnosis], int]:
    """({image SHA-256: the row whose label it gets}, photos without agreement) of ``rows`` with
    feedback, oldest feedback first; see the module docstring for ``by`` and ``min_agree``."""
    if by is not None:
        rows = [r for r in rows if r.feedback_by in by]
    if min_agree is None:
        return {r.image_sha256: r for r in rows}, 0  # the latest feedback wins
    votes: dict[str, dict[str, Diagnosis]] = {}
    for r in rows:  # a reviewer's later label replaces their earlier one
        if r.feedback_by is not None:
            votes.setdefault(r.image_sha256, {})[r.feedback_by] = r
    chosen, not_agreed = {}, 0
    for sha, by_reviewer in votes.items():
        (label, count), *others = Counter(
            r.feedback_label for r in by_reviewer.values()
        ).most_common()
        if count >= min_agree and (not others or others[0][1] < count):
            chosen[sha] = [r for r in by_reviewer.values() if r.feedback_label == label][-1]
        else:
            not_agreed += 1
    return chosen, not_agreed


def _check_outliers_dir(out_dir: Path, outliers_dir: Path | None) -> Path | None:
    if outliers_dir is None:
        return None
    inside = outliers_dir.resolve()
    if inside == out_dir.resolve() or out_dir.resolve() in inside.parents:
        raise ExportError(
            f"the outliers folder {outliers_dir} must not be inside OUT_DIR {out_dir}: training "
            "on OUT_DIR would take it for a class"
        )
    return outliers_dir


def _write_copy(target: Path, data: bytes, summary: ExportSummary) -> None:
    """``target`` with ``data`` (atomically), unless it holds them already."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ExportError(f"cannot create {target.parent}: {err.strerror or err}") from None
    if target.is_file() and target.read_bytes() == data:
        summary.unchanged += 1
    else:
        atomic_write(target, data)
        summary.written += 1


def export_feedback(
    db: str | Path,
    out_dir: str | Path,
    by: list[str] | None = None,
    min_agree: int | None = None,
    outliers_dir: str | Path | None = None,
) -> ExportSummary:
    """Write every image with feedback into ``out_dir/<label>/`` ("not a leaf" photos into
    ``outliers_dir``, or nowhere without it); see the module docstring."""
    out_dir = Path(out_dir)
    outliers = _check_outliers_dir(out_dir, None if outliers_dir is None else Path(outliers_dir))
    if not str(db).startswith(("postgresql://", "postgres://")) and not Path(db).is_file():
        raise ExportError(f"database does not exist: {db}")  # open_store would create it
    store = open_store(db)
    try:
        rows = store.with_feedback()  # oldest feedback first: later rows win
    finally:
        store.close()
    latest, not_agreed = agreed_labels(rows, by, min_agree)
    summary = ExportSummary(not_agreed=not_agreed)
    for sha, row in sorted(latest.items()):
        if row.image_path is None or not Path(row.image_path).is_file():
            summary.missing.append(f"diagnosis {row.id} ({sha[:12]}): image not stored")
            continue
        source = Path(row.image_path)
        name = f"{sha}{source.suffix}"
        target = None
        if row.feedback_label != NOT_A_LEAF:
            target = out_dir / _check_label(row.feedback_label) / name
            _write_copy(target, source.read_bytes(), summary)
        elif outliers is not None:
            target = outliers / name
            _write_copy(target, source.read_bytes(), summary)
            summary.outliers += 1
        else:
            summary.outliers_left_out += 1
        stale = [*out_dir.glob(f"*/{name}"), *([outliers / name] if outliers else [])]
        for path in stale:
            if path != target and path.is_file():
                path.unlink()
    return summary
