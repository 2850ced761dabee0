"""How a process finds its communicator, and how an error on one rank ends every rank."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from typing import TypeVar

from purenn.distributed.group import (
    Communicator,
    DistributedError,
    LocalCommunicator,
    launcher_size,
)

_world: Communicator | None = None


def world() -> Communicator:
    """The communicator of this process: MPI under a launcher with > 1 rank, else local.

    Raises:
        DistributedError: started by mpiexec with several ranks but mpi4py is not installed.
    """
    global _world
    if _world is None:
        size = launcher_size()
        if size > 1:
            try:
                from purenn.distributed.mpi import MPICommunicator
            except ImportError as err:
                raise DistributedError(
                    f"started by mpiexec with {size} processes, but mpi4py cannot be imported "
                    f"({err}); install it with: pip install 'purenn[mpi]'"
                ) from None
            _world = MPICommunicator()
        else:
            _world = LocalCommunicator()
    return _world


F = TypeVar("F", bound=Callable)


def abort_on_error(func: F) -> F:
    """Make ``func`` end the whole job when it raises on one rank of several.

    A rank that leaves by an exception would leave the others waiting forever in their next
    collective. Under MPI the error is printed with the rank (with its traceback if it is not
    a ValueError/OSError, the errors that explain themselves) and ``MPI_Abort`` ends every
    rank with a non-zero status. In one process the exception propagates unchanged.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        comm = world()
        if comm.size == 1:
            return func(*args, **kwargs)
        try:
            return func(*args, **kwargs)
        except BaseException as err:
            if not isinstance(err, (ValueError, OSError, KeyboardInterrupt, SystemExit)):
                traceback.print_exc()
            print(
                f"purenn: rank {comm.rank} of {comm.size}: {type(err).__name__}: {err}; "
                "aborting every rank",
                file=sys.stderr,
                flush=True,
            )
            comm.abort(1)
            raise

    return wrapper  # type: ignore[return-value]
