"""CPU time of processes from /proc (Linux), and which process listens on a port.

psutil is not a dependency, and /proc/<pid>/stat is all that is needed: utime
and stime cover every thread of the process, which matters for gRPC's C-core
threads and SecantusDB's worker threads.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path

PROC = Path("/proc")
# Fields 14 and 15 of /proc/<pid>/stat, counted from 1; the parser below starts
# after the command name, at field 3.
_UTIME_AFTER_COMM = 14 - 3
_STIME_AFTER_COMM = 15 - 3
_TCP_LISTEN = "0A"
_Hook = Callable[[], Awaitable[None]]


def clock_ticks_per_second() -> int:
    return os.sysconf("SC_CLK_TCK")


def parse_stat_ticks(stat_line: str) -> int:
    """utime + stime, in clock ticks, from the text of /proc/<pid>/stat.

    The command name (field 2) is in parentheses and may itself contain spaces
    and ')', so fields are counted from the last ')'.
    """
    end_of_comm = stat_line.rfind(")")
    if end_of_comm < 0:
        raise ValueError("not a /proc/<pid>/stat line")
    fields = stat_line[end_of_comm + 1 :].split()
    if len(fields) <= _STIME_AFTER_COMM:
        raise ValueError("truncated /proc/<pid>/stat line")
    return int(fields[_UTIME_AFTER_COMM]) + int(fields[_STIME_AFTER_COMM])


def cpu_seconds(pid: int, *, proc: Path = PROC) -> float | None:
    """CPU seconds (user + system) used so far by ``pid``; None if it is gone."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return parse_stat_ticks(text) / clock_ticks_per_second()


def snapshot(pids: Mapping[str, int], *, proc: Path = PROC) -> dict[str, float | None]:
    return {name: cpu_seconds(pid, proc=proc) for name, pid in pids.items()}


def cpu_delta(
    before: Mapping[str, float | None], after: Mapping[str, float | None]
) -> dict[str, float | None]:
    """CPU seconds used between two snapshots, per process.

    None when the process was missing at either end, or when its counter went
    down (the PID was reused by a restarted process): a wrong number would be
    worse than none.
    """
    result: dict[str, float | None] = {}
    for name in before.keys() | after.keys():
        start, end = before.get(name), after.get(name)
        if start is None or end is None or end < start:
            result[name] = None
        else:
            result[name] = round(end - start, 3)
    return dict(sorted(result.items()))


class CpuBook:
    """CPU seconds per process, per phase, from /proc snapshots at the phase's edges."""

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, float | None]] = {}
        self._open: dict[str, dict[str, float | None]] = {}

    def hooks(self, phase: str, pids: Mapping[str, int]) -> tuple[_Hook, _Hook]:
        async def begin() -> None:
            self._open[phase] = snapshot(pids)

        async def end() -> None:
            self.phases[phase] = cpu_delta(self._open.pop(phase), snapshot(pids))

        return begin, end


def parse_listening_inodes(proc_net_tcp: str, ports: Iterable[int]) -> dict[int, int]:
    """{socket inode: port} of listening sockets on ``ports`` in /proc/net/tcp(6) text."""
    wanted = set(ports)
    found: dict[int, int] = {}
    for line in proc_net_tcp.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _TCP_LISTEN:
            continue
        port = int(fields[1].rsplit(":", 1)[1], 16)
        if port in wanted:
            found[int(fields[9])] = port
    return found


def pids_listening_on(ports: Iterable[int], *, proc: Path = PROC) -> dict[int, int]:
    """{port: pid} of the processes that listen on ``ports`` (those this user can see)."""
    inodes: dict[int, int] = {}
    for table in ("tcp", "tcp6"):
        try:
            inodes.update(parse_listening_inodes((proc / "net" / table).read_text(), ports))
        except OSError:
            continue
    if not inodes:
        return {}
    wanted = {f"socket:[{inode}]": port for inode, port in inodes.items()}
    owners: dict[int, int] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                port = wanted.get(os.readlink(fd))
            except OSError:
                continue
            if port is not None:
                owners.setdefault(port, int(entry.name))
    return owners
