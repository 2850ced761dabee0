"""A group of ranks and the collectives data-parallel training needs; the group of one process.

A communicator joins ``size`` processes (ranks ``0 .. size-1``) running the same program. Rank 0
is the root: it alone writes files, and its values win where ranks must agree. The MPI
implementation (:mod:`purenn.distributed.mpi`) subclasses :class:`Communicator`;
:mod:`purenn.distributed.communicator` picks the one this process runs in.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

from purenn.kernels.parallel import available_cores

# Set by the launchers in every process they start: Open MPI, then MPICH / Intel MPI (PMI).
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE")
LOCAL_SIZE_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PALS_LOCAL_SIZE")


class DistributedError(ValueError):
    """Running under mpiexec is impossible here (mpi4py missing), or ranks disagree."""


class Communicator:
    """The collectives of a group of ranks; this base class is the group of one process.

    Every method is collective: all ranks call it, in the same order, or the program hangs (an
    MPI implementation cannot tell a slow rank from a missing call).

    Attributes:
        rank: this process's number in ``[0, size)``.
        size: number of processes.
    """

    rank = 0
    size = 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        """``(rank, size)``: which part of every batch this rank computes."""
        return self.rank, self.size

    def allreduce_(self, buffer: np.ndarray) -> np.ndarray:
        """Replace ``buffer`` (contiguous float array) by its element-wise sum over the ranks."""
        return buffer

    def broadcast_(self, array: np.ndarray) -> np.ndarray:
        """Overwrite ``array`` (contiguous) on every rank with rank 0's."""
        return array

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` (a picklable object) on every rank."""
        return value

    def allgather(self, value: Any) -> list:
        """Every rank's ``value``, in rank order, on every rank."""
        return [value]

    def barrier(self) -> None:
        """Return once every rank has called it."""

    def abort(self, code: int) -> None:
        """End every rank of the job at once with exit status ``code``."""
        sys.exit(code)

    def threads_per_rank(self) -> int | None:
        """Default BLAS/array threads for this rank (None: all available cores)."""
        return None


class LocalCommunicator(Communicator):
    """One process: every collective returns its input."""


def launcher_size(environ: dict | None = None) -> int:
    """The number of ranks an MPI launcher started, from its environment (1 if none)."""
    environ = os.environ if environ is None else environ
    for name in SIZE_VARIABLES:
        value = environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def local_size(environ: dict | None = None) -> int:
    """Ranks started on this host (1 if the launcher does not say)."""
    environ = os.environ if environ is None else environ
    for name in LOCAL_SIZE_VARIABLES:
        value = environ.get(name, "")
        if value.isdigit():
            return max(1, int(value))
    return 1


def default_threads(cores: int, machine_cores: int, ranks_here: int) -> int:
    """Threads per rank: the cores bound to it, or an equal share of an unbound machine.

    A launcher that binds each rank to cores (Open MPI does by default for few ranks) leaves
    ``cores`` < ``machine_cores``: use them all. Unbound, the ranks on a host share its cores.
    """
    if cores < machine_cores:
        return cores
    return max(1, cores // ranks_here)


def threads_for_this_rank() -> int:
    return default_threads(available_cores(), os.cpu_count() or 1, local_size())
