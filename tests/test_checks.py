"""The shared argument checks: what counts as an int or a fraction, and the one message form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from purenn.checks import check_fraction, check_int, is_int, require
from purenn.data import DataError


@pytest.mark.parametrize(
    ("value", "expected"),
    [(3, True), (np.int64(3), True), (np.uint8(0), True), (True, False), (3.0, False),
     ("3", False), (None, False)],
)  # fmt: skip
def test_is_int_accepts_python_and_numpy_integers_but_not_bools(value, expected):
    assert is_int(value) is expected


def test_check_int_returns_a_python_int_and_names_the_argument():
    assert check_int(np.int32(5), "batch_size") == 5 and type(check_int(np.int32(5), "n")) is int
    assert check_int(0, "seed", minimum=0) == 0
    with pytest.raises(
        ValueError, match=r"^batch_size must be an int >= 1, received: batch_size=0$"
    ):
        check_int(0, "batch_size")
    with pytest.raises(
        DataError, match=r"^image_size must be an int >= 8, received: image_size=8\.0$"
    ):
        check_int(8.0, "image_size", 8, DataError)


@pytest.mark.parametrize("bad", [1.0, -0.1, math.nan, True, "0.1", None])
def test_check_fraction_rejects_everything_outside_zero_to_one(bad):
    with pytest.raises(ValueError, match=rf"^p must be a number in \[0, 1\), received: p={bad!r}$"):
        check_fraction(bad, "p")


def test_check_fraction_accepts_the_half_open_interval():
    assert check_fraction(0, "p") == 0.0 and check_fraction(np.float32(0.5), "p") == 0.5


def test_require_raises_the_given_type_only_when_not_ok():
    require(True, "lr", "> 0", -1)
    with pytest.raises(DataError, match=r"^lr must be > 0, received: lr=-1$"):
        require(False, "lr", "> 0", -1, DataError)
