"""`--pin-server`: the server's processes on some cores, everything else on the others (Linux only).

On a machine whose cores the server shares with PostgreSQL, Redis and the load generator, a figure says
what all of them reach together, and every process slows the others down (each wake-up of a PostgreSQL
backend can preempt a worker in the middle of a request). Pinned, the server's cores run nothing but the
server: the figure is what an instance on that many cores reaches with its database elsewhere, and its CPU
per request is the server's own.

PostgreSQL (the postmaster first, so that new backends inherit it) and Redis are moved for the run and
given back their cores afterwards; this needs the right to change other users' processes (root, or
CAP_SYS_NICE).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from bench import sysstat

PROC = Path("/proc")
_SHARED_SERVICES = ("postgres", "redis-server")


def parse_cpus(spec: str) -> set[int]:
    """'0', '0,2' or '0-1' as a set of CPU numbers."""
    cpus: set[int] = set()
    for part in spec.split(","):
        first, _, last = part.strip().partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def _tasks(pid: int) -> list[int]:
    """A process's threads: affinity belongs to each thread, and a new thread inherits its creator's."""
    try:
        return [int(task.name) for task in (PROC / str(pid) / "task").iterdir()]
    except OSError:
        return []


def _set(pid: int, cpus: set[int]) -> None:
    for task in _tasks(pid):
        with contextlib.suppress(ProcessLookupError):  # gone meanwhile
            os.sched_setaffinity(task, cpus)


def _services() -> list[int]:
    """PostgreSQL's and Redis's processes, the postmaster (lowest PID) first."""
    stats = sysstat.all_stats()
    return sorted(pid for pid, (comm, _ppid, _ticks) in stats.items() if comm.startswith(_SHARED_SERVICES))


class Pinning:
    def __init__(self, server_cpus: set[int]) -> None:
        available = os.sched_getaffinity(0)
        if not server_cpus <= available:
            raise SystemExit(f"--pin-server: this machine has CPUs {sorted(available)}")
        self.server_cpus = server_cpus
        self.other_cpus = available - server_cpus
        if not self.other_cpus:
            raise SystemExit("--pin-server: leave at least one CPU for PostgreSQL, Redis and the load")
        self._own = available
        self._services: dict[int, set[int]] = {}

    def apply(self, server_root: int) -> None:
        """Everything else first, so that nothing the server wakes runs on its cores meanwhile."""
        _set(os.getpid(), self.other_cpus)  # load generators started later inherit it
        for pid in _services():
            try:
                self._services[pid] = os.sched_getaffinity(pid)
            except ProcessLookupError:
                continue
            _set(pid, self.other_cpus)
        stats = sysstat.all_stats()
        for pid in sysstat.descendants({server_root}, {pid: s[1] for pid, s in stats.items()}):
            _set(pid, self.server_cpus)

    def restore(self) -> None:
        """Gives the services back their cores; a backend started during the run gets all of them."""
        _set(os.getpid(), self._own)
        for pid in _services():
            _set(pid, self._services.get(pid, self._own))

    def describe(self) -> dict[str, list[int]]:
        return {"server_cpus": sorted(self.server_cpus), "other_cpus": sorted(self.other_cpus)}
