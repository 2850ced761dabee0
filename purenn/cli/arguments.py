"""Argument types shared by the subcommands' parsers."""

from __future__ import annotations

import argparse

from purenn.inference.tta import MAX_VIEWS, VIEWS, check_views

THREADS_HELP = "BLAS threads and image-decoding processes (default: all cores)"


def positive_int(text: str) -> int:
    """``text`` as an int of at least 1; argparse reports anything else as an invalid value."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


positive_int.__name__ = "positive int"  # argparse names the type in its message


def non_negative_int(text: str) -> int:
    """``text`` as an int of at least 0."""
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


non_negative_int.__name__ = "non-negative int"


def port_number(text: str) -> int:
    """``text`` as a TCP port, 0 to 65535 (0: one the system picks)."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(text)
    return value


port_number.__name__ = "port number (0-65535)"


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
