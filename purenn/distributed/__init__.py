"""Data-parallel training over MPI (optional extra ``purenn[mpi]``).

The fit loop meets distribution in one place, :class:`DataParallel`: it asks a
:class:`Communicator` to sum the gradients of each step (one Allreduce over one flat buffer),
broadcast the initial state, gather evaluation outputs and agree on stopping. In one process the
communicator is :class:`LocalCommunicator` and the loop takes its usual path. ``world()`` picks
the MPI communicator when the process was started by ``mpiexec`` with more than one rank; mpi4py
is imported only then. See docs/DISTRIBUTED.md.
"""

from purenn.distributed.communicator import abort_on_error, world
from purenn.distributed.data_parallel import DataParallel
from purenn.distributed.group import (
    Communicator,
    DistributedError,
    LocalCommunicator,
    launcher_size,
)

__all__ = [
    "Communicator",
    "DataParallel",
    "DistributedError",
    "LocalCommunicator",
    "abort_on_error",
    "launcher_size",
    "world",
]
