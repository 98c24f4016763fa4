"""Process plumbing for preprocessing: MPI ranks (under ``mpirun``), local worker pools.

MPI is used only when a launcher says so through its environment (MPICH/Intel MPI/hydra set
``PMI_RANK``/``PMI_SIZE``, Open MPI sets ``OMPI_COMM_WORLD_*``, PMIx launchers ``PMIX_RANK``),
so a plain ``python -m data_pipeline preprocess`` never initialises MPI and needs no MPI
library. Only small Python objects (plans, per-unit results) travel between ranks.
"""

from __future__ import annotations

import os
from typing import Any

_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MPI_LOCALRANKID")
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")


def launched_by_mpi() -> bool:
    return any(v in os.environ for v in _RANK_VARS)


class LocalComm:
    """The one-process stand-in for an MPI communicator."""

    rank, size = 0, 1

    def bcast(self, obj: Any) -> Any:
        return obj

    def gather(self, obj: Any) -> list[Any]:
        return [obj]

    def allgather(self, obj: Any) -> list[Any]:
        return [obj]

    def barrier(self) -> None:
        pass


class MPIComm:
    """mpi4py's COMM_WORLD behind the same four collectives (pickled Python objects)."""

    def __init__(self):
        try:
            from mpi4py import MPI
        except ImportError as e:  # e.g. mpi4py without an MPI library
            raise RuntimeError(f"launched by mpirun but mpi4py cannot load MPI ({e})") from e
        self._comm = MPI.COMM_WORLD
        self.rank, self.size = self._comm.Get_rank(), self._comm.Get_size()

    def bcast(self, obj: Any) -> Any:
        return self._comm.bcast(obj, root=0)

    def gather(self, obj: Any) -> list[Any] | None:
        return self._comm.gather(obj, root=0)

    def allgather(self, obj: Any) -> list[Any]:
        return self._comm.allgather(obj)

    def barrier(self) -> None:
        self._comm.Barrier()


def get_comm() -> LocalComm | MPIComm:
    """MPI's world communicator when launched by an MPI launcher, else a local stand-in."""
    if not launched_by_mpi():
        return LocalComm()
    size = next((int(os.environ[v]) for v in _SIZE_VARS if v in os.environ), None)
    if size == 1:
        return LocalComm()
    return MPIComm()


def pool_map(pool, fn, items: list, weights: list[int], on_done=None) -> list:
    """``fn`` over ``items``, results in item order; in a pool largest first, and each result
    reported to ``on_done(index, result)`` as soon as it is ready."""
    order = sorted(range(len(items)), key=lambda i: (-weights[i], i))
    results: dict[int, object] = {}
    if pool is None:
        it = ((i, fn(items[i])) for i in order)
    else:
        it = pool.imap_unordered(_Indexed(fn), [(i, items[i]) for i in order])
    for i, r in it:
        results[i] = r
        if on_done is not None:
            on_done(i, r)
    return [results[i] for i in range(len(items))]


class _Indexed:
    """Picklable ``(i, x) -> (i, fn(x))``, so unordered results find their item."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, ix):
        return ix[0], self.fn(ix[1])
