"""Argument types shared by the subcommands' parsers."""

from __future__ import annotations

import argparse

from purenn.inference.tta import MAX_VIEWS, VIEWS, check_views

THREADS_HELP = "BLAS threads and image-decoding processes (default: all cores)"


def int_between(minimum: int, maximum: int | None, name: str):
    """An argparse type: ``text`` as an int from ``minimum`` to ``maximum`` (None: no upper
    bound). argparse reports anything else as an invalid ``name`` value."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum or (maximum is not None and value > maximum):
            raise ValueError(text)
        return value

    parse.__name__ = name  # argparse names the type in its message
    return parse


positive_int = int_between(1, None, "positive int")
non_negative_int = int_between(0, None, "non-negative int")
#: A TCP port (0: one the system picks).
port_number = int_between(0, 65535, "port number (0-65535)")


def positive_float(text: str) -> float:
    """``text`` as a float greater than 0."""
    value = float(text)
    if not value > 0:
        raise ValueError(text)
    return value


positive_float.__name__ = "positive number"


def tta_views(text: str) -> int:
    """``text`` as a number of test-time augmentation views, 1 to 8."""
    try:
        return check_views(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a number of views from 1 to {MAX_VIEWS}, received: {text!r}"
        ) from None


def add_tta(parser: argparse.ArgumentParser) -> None:
    """``--tta N``: average the calibrated probabilities over N flipped and turned views."""
    parser.add_argument(
        "--tta",
        type=tta_views,
        default=1,
        metavar="N",
        help=f"test-time augmentation: the mean of the calibrated probabilities over the "
        f"first N of the views {', '.join(VIEWS)} (1: the image alone); costs N forward "
        "passes per image",
    )


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """The ``MODEL`` positional of every command that reads a model file."""
    parser.add_argument(
        "model", metavar="MODEL", help="a model file (.npz or .safetensors), or a run folder"
    )


def add_batch_size(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batch-size", type=positive_int, default=64, metavar="N", help="images per forward pass"
    )


def add_cache_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir", metavar="DIR", help="decoded-image cache (default: ~/.cache/purenn)"
    )


def add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=positive_int, metavar="N", help=THREADS_HELP)
