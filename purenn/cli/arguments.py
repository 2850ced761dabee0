"""Argument types shared by the subcommands' parsers."""

from __future__ import annotations


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


def positive_float(text: str) -> float:
    """``text`` as a float greater than 0."""
    value = float(text)
    if not value > 0:
        raise ValueError(text)
    return value


positive_float.__name__ = "positive number"
