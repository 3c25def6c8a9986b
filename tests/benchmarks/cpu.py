"""CPU seconds spent by groups of processes between two points, read from ``/proc``.

Benchmarks on this 2-core machine are CPU-bound, and wall time alone does not tell who spent
the cores. A :class:`CpuMeter` takes a snapshot of every process's user+system time, and later
says how much each role (the trees under given root pids, or processes whose command line
contains a marker) used in between. Processes that exit in between are not counted (the roles
measured here are long-lived: worker pool processes, IMAP sessions, Postgres backends).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class _Proc:
    ppid: int
    cpu_s: float
    cmdline: str


def _read_all() -> dict[int, _Proc]:
    procs: dict[int, _Proc] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # the command name (field 2) may hold spaces and parentheses: split after the last ')'
        fields = stat[stat.rindex(")") + 2 :].split()
        utime, stime = int(fields[11]), int(fields[12])
        procs[int(entry.name)] = _Proc(int(fields[1]), (utime + stime) / TICKS, cmdline)
    return procs


def tree(root: int) -> Callable[[int, Mapping[int, _Proc]], bool]:
    """A role: ``root`` and every process below it."""

    def member(pid: int, procs: Mapping[int, _Proc]) -> bool:
        seen = 0
        while pid > 1 and seen < 64:
            if pid == root:
                return True
            proc = procs.get(pid)
            if proc is None:
                return False
            pid, seen = proc.ppid, seen + 1
        return False

    return member


def cmdline_has(marker: str) -> Callable[[int, Mapping[int, _Proc]], bool]:
    """A role: processes whose command line contains ``marker``."""
    return lambda pid, procs: marker in procs[pid].cmdline


class CpuMeter:
    """CPU seconds per role between :meth:`start` and :meth:`stop`, plus the machine's total."""

    def __init__(self, roles: Mapping[str, Callable[[int, Mapping[int, _Proc]], bool]]) -> None:
        self.roles = dict(roles)
        self._before: dict[int, _Proc] = {}
        self._machine_before = 0.0

    @staticmethod
    def _machine_busy_s() -> float:
        # first line of /proc/stat: cpu user nice system idle iowait irq softirq steal ...
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]
        return (sum(values[:8]) - idle) / TICKS

    def start(self) -> None:
        self._before = _read_all()
        self._machine_before = self._machine_busy_s()

    def stop(self) -> dict[str, float]:
        after = _read_all()
        used = {name: 0.0 for name in self.roles}
        for pid, proc in after.items():
            spent = proc.cpu_s - (self._before[pid].cpu_s if pid in self._before else 0.0)
            for name, member in self.roles.items():
                if member(pid, after):
                    used[name] += spent
                    break
        used["machine"] = self._machine_busy_s() - self._machine_before
        return used
