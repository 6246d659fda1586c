"""The process tree below a pid, read from Linux's /proc (empty where there is no /proc).

One reader for the two users: the launchers stop every descendant of what they started
(`ppa.launch.processes`), the benchmark sums the memory of a simulation's process tree. A
process is identified by (pid, start time), so a recycled pid is never mistaken for it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PROC = Path("/proc")
ZOMBIE = "Z"


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a live process from /proc, None when it is gone."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def process_table() -> dict[int, tuple[str, int, int]]:
    """pid -> (state, ppid, start time) of every process in /proc (empty without /proc)."""
    table: dict[int, tuple[str, int, int]] = {}
    if not PROC.is_dir():
        return table
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None:
                table[int(entry.name)] = stat
    return table


def descendants(root: int) -> dict[int, int]:
    """pid -> start time of every live (non-zombie) descendant of `root`."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for pid, (state, ppid, start) in process_table().items():
        if state != ZOMBIE:
            children.setdefault(ppid, []).append(pid)
            starts[pid] = start
    found: dict[int, int] = {}
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found[child] = starts[child]
                stack.append(child)
    return found


def alive(pid: int, start_time: int) -> bool:
    """True while `pid` is the same (non-zombie) process that started at `start_time`."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] != ZOMBIE and stat[2] == start_time


def command_name(pid: int) -> str:
    """The kernel's short name of a process (``/proc/<pid>/comm``), "?" when unreadable."""
    try:
        return (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return "?"


def reap_exited_children() -> None:
    """Collect exited children of this process that nobody waits for (adopted orphans).

    Only zombies are collected: a live child's status stays for its subprocess.Popen.
    """
    for pid, (state, ppid, _) in process_table().items():
        if ppid == os.getpid() and state == ZOMBIE:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
