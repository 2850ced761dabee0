"""The ``purenn serve`` and ``purenn diagnoses export`` commands (FastAPI and uvicorn are
imported only when ``serve`` runs)."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

from purenn.cli.arguments import positive_float, positive_int

DEFAULT_DB = "purenn-serve/history.db"
IMAGES_FOLDER = "images"  # default --store-images: beside a SQLite database


class ServeError(ValueError):
    """A bad ``serve`` argument or a missing extra."""


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind((host, port))
        except OSError as err:
            raise ServeError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


def default_images_dir(db: str) -> Path | None:
    """Where uploads are kept when neither --store-images nor --no-store-images is given:
    ``<database folder>/images`` for SQLite; nothing for PostgreSQL (its servers may run on
    several machines, which share no folder)."""
    if db.startswith(("postgresql://", "postgres://")):
        return None
    return Path(db).absolute().parent / IMAGES_FOLDER


def _cmd_serve(args: argparse.Namespace, progress) -> int:
    try:
        import uvicorn

        from purenn.serve.app import Settings, create_app
    except ImportError as err:
        raise ServeError(
            f"purenn serve needs the serve extra ({err.name} is missing): "
            'pip install "purenn[serve]"'
        ) from None
    from purenn.kernels.runtime import limit_threads
    from purenn.serve.images import ImageStore
    from purenn.serve.model import ServedModel
    from purenn.serve.store import open_store

    if args.no_store_images:
        images = None
    elif args.store_images is not None:
        images = Path(args.store_images)
    else:
        images = default_images_dir(args.db)
    # Reported before the server starts: a bad model file, a database or image folder that
    # cannot be opened (created here, as the first start would), a port already taken.
    ServedModel.load(args.model)
    open_store(args.db).close()
    if images is not None:
        ImageStore(images)
    _check_port_free(args.host, args.port)
    settings = Settings(
        model_path=Path(args.model),
        db=args.db,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        store_images=images,
    )
    progress.info(
        f"serving {args.model} on http://{args.host}:{args.port}/ (history: {args.db}; "
        f"images: {images or 'not stored'})"
    )
    with limit_threads(args.threads):
        uvicorn.run(
            create_app(settings),
            host=args.host,
            port=args.port,
            log_level="warning" if args.quiet else "info",
        )
    return 0


def _cmd_export(args: argparse.Namespace, progress) -> int:
    from purenn.serve.feedback import export_feedback

    summary = export_feedback(args.db, args.out_dir)
    for line in summary.missing:
        progress.info(f"skipped {line}")
    progress.result(
        f"{summary.written} images written, {summary.unchanged} already there, "
        f"{len(summary.missing)} without a stored image: {args.out_dir}"
    )
    return 0


def add_parser(commands) -> None:
    """Register ``serve`` and ``diagnoses`` on the ``purenn`` sub-command parsers."""

    p = commands.add_parser("serve", help="an HTTP API and a web page over a model")
    p.add_argument("model", metavar="MODEL", help="a .npz model file")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="(default: 8000)")
    p.add_argument(
        "--db",
        default=DEFAULT_DB,
        metavar="PATH_OR_URL",
        help=f"history: a SQLite file or a postgresql:// URL (default: {DEFAULT_DB})",
    )
    p.add_argument("--max-batch", type=positive_int, default=32, metavar="N",
                   help="images per pass at most; 1: no batching (default: 32)")  # fmt: skip
    p.add_argument("--max-queue", type=positive_int, default=128, metavar="N",
                   help="most requests waiting; beyond it 503 (default: 128)")  # fmt: skip
    p.add_argument("--max-upload-mb", type=positive_float, default=10, metavar="MB",
                   help="largest upload accepted (default: 10)")  # fmt: skip
    store = p.add_mutually_exclusive_group()
    store.add_argument("--store-images", metavar="DIR",
                       help="keep accepted uploads here (default: 'images' beside a SQLite "
                       "database; none with PostgreSQL)")  # fmt: skip
    store.add_argument("--no-store-images", action="store_true", help="keep no uploads")
    p.add_argument("--threads", type=positive_int, metavar="N", help="BLAS threads")
    p.set_defaults(func=_cmd_serve)

    p = commands.add_parser("diagnoses", help="the history of purenn serve")
    sub = p.add_subparsers(dest="action", required=True, parser_class=type(p))
    e = sub.add_parser("export", help="images with feedback into OUT_DIR/<label>/ (for training)")
    e.add_argument("db", metavar="DB", help="the SQLite file or postgresql:// URL of the server")
    e.add_argument("out_dir", metavar="OUT_DIR", help="the training folder to write")
    e.add_argument("--quiet", "-q", action="store_true", help="print only the result")
    e.set_defaults(func=_cmd_export)
