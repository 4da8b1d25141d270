"""`--pin-server`: the server's processes on some cores, everything else on the others (Linux only).

On a machine whose cores the server shares with PostgreSQL, Redis and the load generator, a figure says
what all of them reach together, and every process slows the others down (each wake-up of a PostgreSQL
backend can preempt a worker in the middle of a request). Pinned, the server's cores run nothing but the
server: the figure is what an instance on that many cores reaches with its database elsewhere, and its CPU
per request is the server's own.

PostgreSQL (the postmaster first, so that new backends inherit it) and Redis are moved for the run and
each of their threads given back its own CPUs afterwards; a process started during the run gets its
parent's. This needs the right to change other users' processes (root, or CAP_SYS_NICE), checked first.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from bench import sysstat

PROC = Path("/proc")
_SHARED_SERVICES = ("postgres", "redis-server")


def parse_cpus(spec: str) -> set[int]:
    """'0', '0,2' or '0-1' as a set of CPU numbers; ValueError if it names none."""
    cpus: set[int] = set()
    for part in spec.split(","):
        first, _, last = part.strip().partition("-")
        low, high = int(first), int(last or first)
        if low < 0 or high < low:
            raise ValueError(f"not a CPU range: {part!r}")
        cpus.update(range(low, high + 1))
    return cpus


def _tasks(pid: int) -> list[int]:
    """A process's threads: affinity belongs to each thread, and a new thread inherits its creator's."""
    try:
        return [int(task.name) for task in (PROC / str(pid) / "task").iterdir()]
    except OSError:
        return []


def _services() -> dict[int, int]:
    """PostgreSQL's and Redis's processes, with their parents."""
    return {
        pid: ppid
        for pid, (comm, ppid, _ticks) in sysstat.all_stats().items()
        if comm.startswith(_SHARED_SERVICES)
    }


class Pinning:
    def __init__(self, server_cpus: set[int]) -> None:
        available = os.sched_getaffinity(0)
        if not server_cpus <= available:
            raise SystemExit(f"--pin-server: this process may use CPUs {sorted(available)} only")
        self.server_cpus = server_cpus
        self.other_cpus = available - server_cpus
        if not self.other_cpus:
            raise SystemExit("--pin-server: leave at least one CPU for PostgreSQL, Redis and the load")
        self._saved: dict[int, set[int]] = {}  # thread -> its CPUs before the run
        self._pinned: set[int] = set()  # processes moved to other_cpus
        for pid in _services():
            try:
                os.sched_setaffinity(pid, os.sched_getaffinity(pid))  # changes nothing; may it at all?
            except PermissionError:
                raise SystemExit(
                    "--pin-server: not allowed to move PostgreSQL's and Redis's processes (run as root)"
                ) from None
            except ProcessLookupError:
                continue

    def _move(self, pid: int, cpus: set[int]) -> None:
        for task in _tasks(pid):
            with contextlib.suppress(ProcessLookupError):
                self._saved.setdefault(task, os.sched_getaffinity(task))
                os.sched_setaffinity(task, cpus)

    def apply(self, server_root: int) -> None:
        """Everything else first, so that nothing the server wakes runs on its cores meanwhile."""
        self._move(os.getpid(), self.other_cpus)  # load generators started later inherit it
        for pid in sorted(_services()):  # the postmaster has the lowest PID
            self._move(pid, self.other_cpus)
            self._pinned.add(pid)
        stats = sysstat.all_stats()
        for pid in sysstat.descendants({server_root}, {pid: s[1] for pid, s in stats.items()}):
            for task in _tasks(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.sched_setaffinity(task, self.server_cpus)

    def restore(self) -> None:
        """Gives every thread moved its CPUs back; a service process started during the run (a backend)
        inherited the pinned CPUs, and gets its parent's. Never raises: it runs while a run ends."""
        for task, cpus in self._saved.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(task, cpus)
        for pid in self._pinned:  # threads a service started during the run: its main thread's CPUs
            for task in _tasks(pid) if pid in self._saved else ():
                if task not in self._saved:
                    with contextlib.suppress(OSError):
                        os.sched_setaffinity(task, self._saved[pid])
        for pid, ppid in _services().items():
            if pid in self._pinned or ppid not in self._pinned:
                continue
            parent = self._saved.get(ppid)
            if parent is None:
                continue
            for task in _tasks(pid):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(task, parent)

    def describe(self) -> dict[str, list[int]]:
        return {"server_cpus": sorted(self.server_cpus), "other_cpus": sorted(self.other_cpus)}
