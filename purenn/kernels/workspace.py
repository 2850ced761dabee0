"""Work arrays kept across calls, so large temporaries cost no fresh page faults each time."""

from __future__ import annotations

import numpy as np


class Workspace:
    """Named arrays reallocated only when their shape or dtype change.

    An array handed out is the owner's internal memory: its content on return is whatever the
    last user left there, and an array returned to a caller must be a new one. Not for two
    threads at once under the same name (per-thread buffers take the thread's slot in the name).
    """

    def __init__(self) -> None:
        self._arrays: dict[object, np.ndarray] = {}

    def get(self, name: object, shape: tuple[int, ...], dtype) -> np.ndarray:
        """The array called ``name``, of ``shape`` and ``dtype`` (uninitialised when new)."""
        shape, dtype = tuple(shape), np.dtype(dtype)
        array = self._arrays.get(name)
        if array is None or array.shape != shape or array.dtype != dtype:
            array = np.empty(shape, dtype=dtype)
            self._arrays[name] = array
        return array

    def clear(self) -> None:
        self._arrays.clear()
