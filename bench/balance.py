"""Keep-alive connections spread evenly over the server's worker processes.

A pre-fork server (uvicorn --workers N) shares one listening socket; whichever worker wakes first
accepts, and a burst of connects lands mostly on one of them (64 at once measured 61/3 here). With
keep-alive that split lasts the whole run, so a "2-worker" figure is really a 1-worker figure. The load
generator therefore connects one connection at a time, and on Linux, when it can see which process owns
the server end of each connection (/proc, same machine, enough privilege), closes and redials the
connections of over-full workers until the split is even. Where it cannot see, it says so and goes on.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

PROC = Path("/proc")
ESTABLISHED = "01"
LISTEN = "0A"


def tcp_entries() -> list[tuple[int, int, str, int]]:
    """(local port, remote port, state, inode) of every TCP socket on the machine."""
    entries = []
    for name in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            entries.append(
                (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), state, inode)
            )
    return entries


def socket_owners(inodes: set[int]) -> dict[int, set[int]]:
    """inode -> the pids that hold it open."""
    owners: dict[int, set[int]] = {}
    if not inodes:
        return owners
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = os.listdir(entry / "fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(entry / "fd" / fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in inodes:
                    owners.setdefault(inode, set()).add(int(entry.name))
    return owners


def _parent(pid: int) -> int | None:
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return int(raw[raw.rfind(")") + 2 :].split()[1])


def server_view(server_port: int, client_ports: list[int]) -> tuple[list[int], dict[int, int]] | None:
    """(the server's worker pids, client port -> the worker that serves it), or None if not visible."""
    if not PROC.exists():
        return None
    entries = tcp_entries()
    listening = {inode for lport, _r, state, inode in entries if lport == server_port and state == LISTEN}
    wanted = set(client_ports)
    conn_inodes = {
        inode: rport
        for lport, rport, state, inode in entries
        if lport == server_port and state == ESTABLISHED and rport in wanted and inode
    }
    owners = socket_owners(listening | set(conn_inodes))
    holders = set().union(*(owners.get(inode, set()) for inode in listening)) if listening else set()
    # The supervisor holds the listening socket too, but only its children accept.
    workers = sorted(pid for pid in holders if not any(_parent(other) == pid for other in holders))
    mapping = {}
    for inode, rport in conn_inodes.items():
        pids = owners.get(inode)
        if pids and len(pids) == 1:
            mapping[rport] = next(iter(pids))
    if not workers or len(mapping) < len(wanted):
        return None
    return workers, mapping


def connection_spread(server_port: int) -> dict[str, int]:
    """How many established connections each server process holds (for the report)."""
    entries = tcp_entries()
    inodes = {inode for lport, _r, state, inode in entries if lport == server_port and state == ESTABLISHED}
    counts: Counter[str] = Counter()
    for pids in socket_owners(inodes).values():
        for pid in pids:
            counts[str(pid)] += 1
    return dict(sorted(counts.items()))


def excess(workers: list[int], mapping: dict[int, int]) -> list[int]:
    """Client ports to redial so that no worker has more than its share (rounded up)."""
    per_worker: dict[int, list[int]] = {pid: [] for pid in workers}
    for port, pid in mapping.items():
        per_worker.setdefault(pid, []).append(port)
    share = -(-len(mapping) // len(workers))
    redial: list[int] = []
    for ports in per_worker.values():
        redial.extend(sorted(ports)[share:])
    return redial
