"""Split ../shared/data/ood into an outlier-exposure half and an evaluation half, as symlinks.

Neither half is ever copied: OUT/train/<folder>/ and OUT/eval/<folder>/ hold symbolic links to
the images in SRC/<folder>/. Near-identical photos must not straddle the halves, so the split
goes by runs of neighbours, not by single files:

- ``background/`` (``image (N).jpg``): PlantVillage shot its backgrounds in bursts of
  consecutive file numbers, so file numbers go in blocks of 50 (1-50, 51-100, ...); even blocks
  are the training half, odd blocks the evaluation half.
- any other folder (``imagenet/``, ``nXXXXXXXX_<class>.jpeg``): WordNet ids of related classes
  are close, so the files sorted by name go in runs of 10; even runs train, odd runs evaluate.

    python benchmarks/split_ood.py ../shared/data/ood runs/ood-split
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

BURST = re.compile(r"image \((\d+)\)")


def half_of(folder: str, position: int, name: str) -> str:
    """'train' or 'eval' for the file ``name``, the ``position``-th of its folder sorted by name."""
    match = BURST.match(name) if folder == "background" else None
    block = (int(match.group(1)) - 1) // 50 if match else position // 10
    return "train" if block % 2 == 0 else "eval"


def split(source: Path, out: Path) -> dict[str, dict[str, int]]:
    """Link every image of ``source``'s subfolders into ``out``; returns counts per half."""
    counts: dict[str, dict[str, int]] = {}
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if p.is_file())
        for position, path in enumerate(files):
            half = half_of(folder.name, position, path.name)
            target = out / half / folder.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.is_symlink():
                target.symlink_to(path.resolve())
            counts.setdefault(folder.name, {"train": 0, "eval": 0})[half] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the OOD folder (../shared/data/ood)")
    parser.add_argument("out", type=Path, help="where train/ and eval/ are made")
    args = parser.parse_args()
    if not args.source.is_dir():
        parser.error(f"source: {args.source} is not a folder")
    for folder, halves in split(args.source, args.out).items():
        print(f"{folder}: {halves['train']} train, {halves['eval']} eval")


if __name__ == "__main__":
    main()
