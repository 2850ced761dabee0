"""The ``purenn serve``, ``purenn serve tokens`` and ``purenn diagnoses export`` commands
(FastAPI and uvicorn are imported only when ``serve`` runs).

Bound to loopback, ``serve`` needs no token unless ``--require-tokens``; bound to any other
address it refuses to start without an active token in the tokens file (the message gives the
command that makes one) unless ``--insecure-open``, which warns on every start."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from pathlib import Path

from purenn.cli.arguments import (
    add_tta,
    non_negative_int,
    port_number,
    positive_float,
    positive_int,
)
from purenn.serve.tokens import ROLES, add_token, default_tokens_path, read_tokens, revoke_token

DEFAULT_DB = "purenn-serve/history.db"
IMAGES_FOLDER = "images"  # default --store-images: beside a SQLite database
NETWORK_RATE_LIMIT = 60  # default --rate-limit when bound beyond loopback
TOKENS_COMMAND = "serve-tokens"  # `purenn serve tokens ...` is parsed as this command


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


def route_tokens_command(argv: list[str] | None) -> list[str]:
    """``serve tokens ...`` -> ``serve-tokens ...`` (``serve`` itself takes a MODEL file)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return [TOKENS_COMMAND, *argv[2:]] if argv[:2] == ["serve", "tokens"] else argv


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def _tokens_path(args: argparse.Namespace) -> Path:
    return Path(args.tokens) if args.tokens else default_tokens_path(args.db)


def _tokens_flags(args: argparse.Namespace) -> str:
    """How the tokens commands name the file ``serve`` was given."""
    return f"--tokens {args.tokens}" if args.tokens else f"--db {args.db}"


def _access(args: argparse.Namespace) -> tuple[Path | None, str | None]:
    """(the tokens file to enforce or None, a warning to print on start or None)."""
    loopback = is_loopback(args.host)
    if args.insecure_open:
        if args.require_tokens:
            raise ServeError("--insecure-open and --require-tokens contradict each other")
        if loopback:
            return None, None
        return None, (
            f"WARNING: --insecure-open: anyone who can reach {args.host}:{args.port} can read the "
            "history and its photos, give feedback that becomes training data, and flood the "
            "server. Create tokens instead: purenn serve tokens add NAME --role review "
            f"{_tokens_flags(args)}"
        )
    if loopback and not args.require_tokens:
        return None, None
    path = _tokens_path(args)
    if not [t for t in read_tokens(path) if t.revoked_at is None]:
        reason = "--require-tokens" if loopback else f"listening on {args.host}"
        raise ServeError(
            f"{reason} needs access tokens and {path} has none: create one with\n"
            f"  purenn serve tokens add NAME --role review {_tokens_flags(args)}\n"
            "(it prints the token once), or start with --insecure-open to let anyone in"
        )
    return path, None


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
    from purenn.kernels.runtime import serving_threads
    from purenn.serve.images import ImageStore
    from purenn.serve.model import ServedModel
    from purenn.serve.store import open_store

    tokens_file, warning = _access(args)  # refused before anything is created
    if args.no_store_images:
        images = None
    elif args.store_images is not None:
        images = Path(args.store_images)
    else:
        images = default_images_dir(args.db)
    # Reported before the server starts: a bad model file, a database or image folder that
    # cannot be opened (created here, as the first start would), a port already taken.
    ServedModel.load(args.model, tta=args.tta)
    open_store(args.db).close()
    if images is not None:
        ImageStore(images)
    _check_port_free(args.host, args.port)
    rate_limit = args.rate_limit
    if rate_limit is None:
        rate_limit = 0 if is_loopback(args.host) else NETWORK_RATE_LIMIT
    settings = Settings(
        model_path=Path(args.model),
        db=args.db,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        store_images=images,
        tokens_file=tokens_file,
        rate_limit=rate_limit,
        tta=args.tta,
    )
    if warning:
        print(f"purenn: {warning}", file=sys.stderr)
    progress.info(
        f"serving {args.model} on http://{args.host}:{args.port}/ (history: {args.db}; "
        f"images: {images or 'not stored'}; tokens: {tokens_file or 'off'}; rate limit: "
        f"{f'{rate_limit}/min' if rate_limit else 'off'}; test-time augmentation: "
        f"{f'{args.tta} views' if args.tta > 1 else 'off'})"
    )
    with serving_threads(args.threads):
        uvicorn.run(
            create_app(settings),
            host=args.host,
            port=args.port,
            log_level="warning" if args.quiet else "info",
            server_header=False,
            # Forwarded headers only from the proxies named; none trusted by default.
            proxy_headers=bool(args.forwarded_allow_ips),
            forwarded_allow_ips=args.forwarded_allow_ips or "",
        )
    return 0


def _cmd_export(args: argparse.Namespace, progress) -> int:
    from purenn.serve.feedback import export_feedback

    summary = export_feedback(args.db, args.out_dir, args.by, args.min_agree, args.outliers)
    for line in summary.missing:
        progress.info(f"skipped {line}")
    agreed = (
        f", {summary.not_agreed} without {args.min_agree} agreeing reviewers"
        if args.min_agree is not None
        else ""
    )
    outliers = ""
    if summary.outliers:
        outliers = f"; {summary.outliers} 'not a leaf' photos in {args.outliers}"
    if summary.outliers_left_out:
        outliers = (
            f"; {summary.outliers_left_out} 'not a leaf' photos left out (--outliers DIR "
            "writes them for purenn train --outliers)"
        )
    progress.result(
        f"{summary.written} images written, {summary.unchanged} already there, "
        f"{len(summary.missing)} without a stored image{agreed}: {args.out_dir}{outliers}"
    )
    return 0


def _cmd_tokens_add(args: argparse.Namespace, progress) -> int:
    path = _tokens_path(args)
    token = add_token(path, args.name, args.role)
    progress.info(f"token {args.name!r} ({args.role}) added to {path}; it is shown only now:")
    progress.result(token)
    return 0


def _cmd_tokens_list(args: argparse.Namespace, progress) -> int:
    path = _tokens_path(args)
    tokens = read_tokens(path)
    if not tokens:
        progress.result(f"no tokens in {path}")
    for t in tokens:
        state = f"revoked {t.revoked_at}" if t.revoked_at else "active"
        progress.result(f"{t.name}\t{t.role}\tcreated {t.created_at}\t{state}")
    return 0


def _cmd_tokens_revoke(args: argparse.Namespace, progress) -> int:
    path = _tokens_path(args)
    revoke_token(path, args.name)
    progress.result(f"token {args.name!r} revoked in {path}")
    return 0


def _add_tokens_file_flags(p) -> None:
    p.add_argument(
        "--db",
        default=DEFAULT_DB,
        metavar="PATH_OR_URL",
        help="the server's history database: the tokens file is tokens.json beside "
        f"it; for a postgresql:// URL, purenn-serve/tokens.json (default: {DEFAULT_DB})",
    )
    p.add_argument("--tokens", metavar="FILE", help="the tokens file (instead of the --db rule)")


def add_parser(commands) -> None:
    """Register ``serve`` and ``diagnoses`` on the ``purenn`` sub-command parsers."""

    p = commands.add_parser("serve", help="an HTTP API and a web page over a model")
    p.add_argument("model", metavar="MODEL", help="a .npz model file")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=port_number, default=8000, help="(default: 8000)")
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
    p.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="threads of the forward pass (default: all cores; BLAS runs one per thread)",
    )
    add_tta(p)
    p.add_argument(
        "--tokens",
        metavar="FILE",
        help="the tokens file (default: tokens.json beside a SQLite --db; "
        "purenn-serve/tokens.json with PostgreSQL)",
    )
    p.add_argument(
        "--require-tokens",
        action="store_true",
        help="require tokens on loopback too (always required on other addresses)",
    )
    p.add_argument(
        "--insecure-open",
        action="store_true",
        help="on a non-loopback address, start without tokens (warns on every start)",
    )
    p.add_argument(
        "--rate-limit",
        type=non_negative_int,
        metavar="N",
        help="predict/explain/feedback requests a minute per address and per token; "
        f"0: off (default: {NETWORK_RATE_LIMIT} beyond loopback, off on loopback)",
    )
    p.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        help="comma-separated proxy addresses whose X-Forwarded-For/-Proto are "
        "trusted (default: none)",
    )
    p.set_defaults(func=_cmd_serve)

    p = commands.add_parser(
        TOKENS_COMMAND,
        prog="purenn serve tokens",
        help="access tokens of purenn serve (run as: purenn serve tokens)",
    )
    sub = p.add_subparsers(dest="action", required=True, parser_class=type(p))
    t = sub.add_parser("add", help="create a token; prints it once, as the last line")
    t.add_argument("name", metavar="NAME", help="who holds it (recorded with their feedback)")
    t.add_argument(
        "--role",
        required=True,
        choices=ROLES,
        help="diagnose: predict, explain; review: also history, photos, feedback; "
        "admin: also metrics",
    )
    t.set_defaults(func=_cmd_tokens_add)
    t = sub.add_parser("list", help="the tokens (names, roles, states; never the tokens)")
    t.set_defaults(func=_cmd_tokens_list)
    t = sub.add_parser("revoke", help="refuse a token from the next request on")
    t.add_argument("name", metavar="NAME")
    t.set_defaults(func=_cmd_tokens_revoke)
    for t in sub.choices.values():
        _add_tokens_file_flags(t)
        t.add_argument("--quiet", "-q", action="store_true", help="print only the result")

    p = commands.add_parser("diagnoses", help="the history of purenn serve")
    sub = p.add_subparsers(dest="action", required=True, parser_class=type(p))
    e = sub.add_parser("export", help="images with feedback into OUT_DIR/<label>/ (for training)")
    e.add_argument("db", metavar="DB", help="the SQLite file or postgresql:// URL of the server")
    e.add_argument("out_dir", metavar="OUT_DIR", help="the training folder to write")
    e.add_argument("--by", nargs="+", metavar="NAME", help="only feedback given with these tokens")
    e.add_argument(
        "--min-agree",
        type=positive_int,
        metavar="K",
        help="only photos that at least K distinct reviewers gave the same label",
    )
    e.add_argument(
        "--outliers",
        metavar="DIR",
        help="write the photos whose feedback is 'not a leaf' into DIR (for purenn train "
        "--outliers DIR); without it they are left out",
    )
    e.add_argument("--quiet", "-q", action="store_true", help="print only the result")
    e.set_defaults(func=_cmd_export)
