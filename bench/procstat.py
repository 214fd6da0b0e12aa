"""CPU time and memory of another process, from /proc (Linux; no psutil)."""

from __future__ import annotations

import asyncio
import os
import time

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants: with --processes=N the server is a supervisor and its
    workers, and its CPU and memory are theirs together."""
    pids, i = [pid], 0
    while i < len(pids):
        try:
            with open(f"/proc/{pids[i]}/task/{pids[i]}/children") as f:
                pids.extend(int(c) for c in f.read().split())
        except OSError:
            pass
        i += 1
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` and its live descendants."""
    total = 0.0
    for p in tree(pid):
        try:
            total += _cpu_seconds(p)
        except OSError:
            pass  # exited meanwhile
    return total


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used by ``pid`` so far (/proc/<pid>/stat utime + stime)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = data[data.rfind(b")") + 2:].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident) of ``pid``, in KiB, summed over its
    descendants (each one's own peak: an upper bound of the tree's peak)."""
    out = {"VmRSS": 0, "VmHWM": 0}
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(("VmRSS:", "VmHWM:")):
                        name, value = line.split(":", 1)
                        out[name] += int(value.split()[0])
        except OSError:
            pass
    return out


def rss_kb(pid: int) -> int:
    return memory_kb(pid).get("VmRSS", 0)


def alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}/stat")


async def wait_quiet(
    pid: int | None,
    *,
    window: float = 0.25,
    busy: float = 0.03,
    quiet_windows: int = 2,
    timeout: float = 30.0,
) -> float:
    """Wait until ``pid`` uses less than ``busy`` of a core for ``quiet_windows`` windows in a
    row (the server has finished what the last step started); the seconds waited.

    Without a pid (a server we did not start and were not told about) just sleep 1 s.
    """
    start = time.monotonic()
    if pid is None:
        await asyncio.sleep(1.0)
        return time.monotonic() - start
    quiet = 0
    last = cpu_seconds(pid)
    while time.monotonic() - start < timeout:
        await asyncio.sleep(window)
        now = cpu_seconds(pid)
        quiet = quiet + 1 if now - last < busy * window else 0
        last = now
        if quiet >= quiet_windows:
            break
    return time.monotonic() - start


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores (/proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


def load_average() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])
