"""Where the CPU went during a measured window, read from /proc (Linux only; empty elsewhere).

On a 2-core machine the server, PostgreSQL, Redis and the load generator share the CPU, and anything
else running at the same time (a test suite, say) skews the figures; the `other` share shows it.
Figures are in percent of one core, so the whole machine is 100 x cores.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import balance, pgstat

PROC = Path("/proc")
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _read_stat(pid: int) -> tuple[str, int, int] | None:
    """(comm, ppid, utime+stime ticks) of a process, None if it is gone."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    lpar, rpar = raw.find("("), raw.rfind(")")
    comm = raw[lpar + 1 : rpar]
    fields = raw[rpar + 2 :].split()
    # fields[0] is state (field 3); ppid is field 4, utime 14, stime 15
    return comm, int(fields[1]), int(fields[11]) + int(fields[12])


def _cmdline(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _machine_busy_ticks() -> tuple[int, int]:
    """(busy, steal) jiffies of all CPUs; steal is time the hypervisor gave to someone else."""
    line = (PROC / "stat").read_text().splitlines()[0].split()
    values = [int(v) for v in line[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    steal = values[7] if len(values) > 7 else 0
    return sum(values[:8]) - idle - steal, steal


def descendants(roots: set[int], parents: dict[int, int]) -> set[int]:
    found = set(roots)
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                changed = True
    return found


@dataclass
class Snapshot:
    ticks: dict[int, tuple[str, int]]  # pid -> (group or "", CPU ticks so far)
    machine: int  # busy ticks of the whole machine
    steal: int
    at: float


@dataclass
class Target:
    """Which processes are the server under test, and which PostgreSQL databases it uses."""

    server: set[int]
    databases: set[str] | None  # None: count every PostgreSQL process as the server's


_PG_TITLE = re.compile(r"^postgres: [^:]+: (.*)$")


def _postgres_database(cmdline: str) -> str | None:
    """The database a PostgreSQL backend or autovacuum worker works in; None for shared processes."""
    match = _PG_TITLE.match(cmdline.strip())
    if match is None:
        return None
    words = match.group(1).split()
    if len(words) >= 3 and words[0] == "autovacuum" and words[1] == "worker":
        return words[2]
    if len(words) >= 3 and (words[2].endswith(")") or words[2] == "[local]"):
        return words[1]  # user database host(port) activity
    return None


def find_target(server_port: int, server_root: int | None) -> Target:
    """The server is whoever holds its listening socket (and their children); its databases are those of
    the PostgreSQL backends at the other end of its TCP connections."""
    stats = all_stats()
    parents = {pid: s[1] for pid, s in stats.items()}
    if server_root is not None:
        roots = {server_root}
    else:
        entries = balance.tcp_entries()
        listening = {i for lport, _r, st, i in entries if lport == server_port and st == balance.LISTEN}
        roots = set().union(*balance.socket_owners(listening).values()) if listening else set()
    server = descendants(roots, parents) if roots else set()
    if not server:
        return Target(server=set(), databases=None)
    entries = balance.tcp_entries()
    owners = balance.socket_owners({i for _l, _r, st, i in entries if st == balance.ESTABLISHED and i})
    local_ports = {
        lport
        for lport, _r, st, inode in entries
        if st == balance.ESTABLISHED and owners.get(inode, set()) & server
    }
    databases = set()
    for pid, (comm, _ppid, _ticks) in stats.items():
        if comm != "postgres":
            continue
        cmdline = _cmdline(pid)
        port = re.search(r"\((\d+)\)", cmdline)
        database = _postgres_database(cmdline)
        if port and database and int(port.group(1)) in local_ports:
            databases.add(database)
    return Target(server=server, databases=databases or None)


def all_stats() -> dict[int, tuple[str, int, int]]:
    stats: dict[int, tuple[str, int, int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            stat = _read_stat(int(entry.name))
            if stat is not None:
                stats[int(entry.name)] = stat
    return stats


def snapshot(target: Target) -> Snapshot | None:
    """CPU ticks so far of every process, each with its group (server, postgres, redis, loadgen or "").

    PostgreSQL backends of other databases (someone else's tests) are not counted as `postgres`; the
    shared PostgreSQL processes (WAL writer, checkpointer, ...) are.
    """
    if not PROC.exists():
        return None
    stats = all_stats()
    parents = {pid: s[1] for pid, s in stats.items()}
    loadgen = descendants({os.getpid()}, parents)
    server = descendants(target.server, parents)
    ticks: dict[int, tuple[str, int]] = {}
    for pid, (comm, _ppid, used) in stats.items():
        group = ""
        if pid in server:
            group = "server"
        elif pid in loadgen:
            group = "loadgen"
        elif comm == "postgres" and (
            target.databases is None or _postgres_database(_cmdline(pid)) in (target.databases | {None})
        ):
            group = "postgres"
        elif comm.startswith("redis-server"):
            group = "redis"
        ticks[pid] = (group, used)
    busy, steal = _machine_busy_ticks()
    return Snapshot(ticks=ticks, machine=busy, steal=steal, at=time.monotonic())


def _describe(pid: int) -> str:
    cmdline = _cmdline(pid).strip()
    stat = _read_stat(pid)
    return f"{pid} {cmdline[:100] or (stat[0] if stat else '?')}"


def cpu_window(
    server_port: int, server_root: int | None, pg_dsn: str | None = None
) -> Callable[[], Callable[[], dict[str, Any]]]:
    """Returns start(); start() takes the first snapshot and returns stop(), which gives % of one core.

    `other` is the machine's busy time outside the four groups: the kernel, and anything else running
    (a test suite, another server). `busiest_others` names the processes that took most of it.
    Take both snapshots while the load-generator processes are alive: once they exit and are reaped,
    their CPU time leaves their /proc entries.
    """

    def start() -> Callable[[], dict[str, Any]]:
        target = find_target(server_port, server_root)
        pg_first = pgstat.read(pg_dsn, target.databases)
        first = snapshot(target)

        def stop() -> dict[str, Any]:
            second = snapshot(target)
            pg_counts = pgstat.delta(pg_first, pgstat.read(pg_dsn, target.databases))
            if first is None or second is None or second.at <= first.at:
                return {}
            scale = 100.0 / CLK_TCK / (second.at - first.at)
            # Per process: what it used between the snapshots (all of it if it started in between).
            # A process that ended in between is lost from its group and shows up in `other`.
            groups = dict.fromkeys(("server", "postgres", "redis", "loadgen"), 0.0)
            others: dict[int, float] = {}
            for pid, (group, used) in second.ticks.items():
                delta = (used - first.ticks.get(pid, ("", 0))[1]) * scale
                if group:
                    groups[group] += delta
                elif delta > 0:
                    others[pid] = delta
            out: dict[str, Any] = {k: round(v, 1) for k, v in groups.items()}
            out["machine"] = round((second.machine - first.machine) * scale, 1)
            out["other"] = max(0.0, round(out["machine"] - sum(groups.values()), 1))
            out["steal"] = round((second.steal - first.steal) * scale, 1)
            busiest = sorted(others.items(), key=lambda item: item[1], reverse=True)[:3]
            out["busiest_others"] = [
                {"process": _describe(pid), "cpu_percent": round(cpu, 1)} for pid, cpu in busiest if cpu >= 5
            ]
            out["server_processes"] = len(target.server)
            out["databases"] = sorted(target.databases) if target.databases else "all"
            if pg_counts:
                out["pg_stat_database"] = pg_counts
            return out

        return stop

    return start


def machine_busy_percent(seconds: float) -> float:
    """How busy the whole machine is over `seconds`, in % of one core."""
    if not PROC.exists():
        return 0.0
    busy0, _ = _machine_busy_ticks()
    t0 = time.monotonic()
    time.sleep(seconds)
    busy1, _ = _machine_busy_ticks()
    return 100.0 * (busy1 - busy0) / CLK_TCK / (time.monotonic() - t0)


def wait_for_quiet(settle: float, max_wait: float, threshold: float) -> float:
    """Sleep `settle` seconds, then up to `max_wait` more until the machine is below `threshold`
    (% of one core) over one second. Returns the last reading."""
    busy = machine_busy_percent(max(settle, 0.5))
    deadline = time.monotonic() + max_wait
    while busy > threshold and time.monotonic() < deadline:
        busy = machine_busy_percent(1.0)
    return round(busy, 1)
