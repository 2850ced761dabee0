"""Argument checks shared by every module, so that every bad argument reads the same way:

    ``<name> must be <requirement>, received: <name>=<value>``

Each check takes the exception type to raise (ValueError by default; the data pipeline raises
its DataError and the config its ConfigError, both ValueError subclasses).
"""

from __future__ import annotations

import numbers
from typing import Any


def is_int(value: Any) -> bool:
    """True for Python and NumPy integers; False for bools, floats and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def require(
    ok: bool, name: str, requirement: str, value: Any, error: type[ValueError] = ValueError
) -> None:
    """Raise ``error("<name> must be <requirement>, received: <name>=<value>")`` unless ``ok``."""
    if not ok:
        raise error(f"{name} must be {requirement}, received: {name}={value!r}")


def check_int(value: Any, name: str, minimum: int = 1, error: type[ValueError] = ValueError) -> int:
    """``value`` as an int if it is an integer >= ``minimum``, else ``error`` naming it."""
    require(is_int(value) and value >= minimum, name, f"an int >= {minimum}", value, error)
    return int(value)


def check_fraction(value: Any, name: str, error: type[ValueError] = ValueError) -> float:
    """``value`` as a float if it is a real number in [0, 1), else ``error`` naming it."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    require(real and 0 <= value < 1, name, "a number in [0, 1)", value, error)
    return float(value)
