"""``purenn cache list | clear``: the decoded-image cache, its entries and their disk space."""

from __future__ import annotations

import argparse
from pathlib import Path

from purenn.data.cache import list_entries, remove_entries
from purenn.training.pipeline import default_cache_dir
from purenn.training.progress import plural


def _megabytes(count: int) -> str:
    return f"{count / 2**20:.1f} MB"


def _cmd_cache(args: argparse.Namespace, progress) -> int:
    cache_dir = args.cache_dir or default_cache_dir()
    if args.action == "clear":
        removed = remove_entries(cache_dir, args.data_dir)
        freed = sum(e.bytes for e in removed)
        which = "" if args.data_dir is None else f" of {args.data_dir}"
        progress.result(
            f"removed {plural(len(removed), 'cache entry')}{which} from {cache_dir} "
            f"({_megabytes(freed)})"
        )
        return 0
    entries = list_entries(cache_dir)
    if args.data_dir is not None:
        root = Path(args.data_dir).expanduser().resolve()
        entries = [e for e in entries if e.root == root]
    for e in entries:
        gone = "" if e.root.is_dir() else "  (folder gone)"
        print(
            f"{e.root}  {e.image_size}x{e.image_size}  {e.images} images  "
            f"{_megabytes(e.bytes)}  {e.path.name}{gone}"
        )
    total = sum(e.bytes for e in entries)
    progress.result(f"{plural(len(entries), 'entry')}, {_megabytes(total)} in {cache_dir}")
    return 0


def add_parser(commands) -> None:
    """Register ``purenn cache`` on the sub-command parsers ``commands``."""
    p = commands.add_parser(
        "cache",
        help="list or clear the decoded-image cache",
        description="Every image folder is decoded once per image size into the cache;\n"
        "list its entries (folder, size, images, disk space) or delete them.",
        epilog="example:\n  purenn cache list\n  purenn cache clear ~/data/leaves",
    )
    p.add_argument("action", choices=("list", "clear"), help="list entries, or delete them")
    p.add_argument(
        "data_dir",
        nargs="?",
        metavar="DATA_DIR",
        help="only the entries of this image folder (default: all)",
    )
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="the cache (default: $PURENN_CACHE_DIR, else $XDG_CACHE_HOME/purenn, else "
        "~/.cache/purenn)",
    )
    p.set_defaults(func=_cmd_cache)
