"""The MPI communicator (mpi4py): the only module that imports mpi4py."""

from __future__ import annotations

from typing import Any

import numpy as np
from mpi4py import MPI

from purenn.distributed.group import Communicator, threads_for_this_rank


class MPICommunicator(Communicator):
    """``MPI.COMM_WORLD``: the ranks started by one ``mpiexec``.

    Arrays travel with mpi4py's buffer interface (no pickling); other values are pickled.
    """

    def __init__(self) -> None:
        self._comm = MPI.COMM_WORLD
        self.rank = self._comm.Get_rank()
        self.size = self._comm.Get_size()

    def allreduce_(self, buffer: np.ndarray) -> np.ndarray:
        self._comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        return buffer

    def broadcast_(self, array: np.ndarray) -> np.ndarray:
        self._comm.Bcast(array, root=0)
        return array

    def broadcast(self, value: Any) -> Any:
        return self._comm.bcast(value, root=0)

    def allgather(self, value: Any) -> list:
        return self._comm.allgather(value)

    def barrier(self) -> None:
        self._comm.Barrier()

    def abort(self, code: int) -> None:
        self._comm.Abort(code)

    def threads_per_rank(self) -> int | None:
        return threads_for_this_rank()
