"""Child processes for the benchmarks: start pinned, measure a process tree, stop for sure.

A server under test may be several processes (nginx master + worker, uvicorn supervisor +
workers) and each process several threads. ``/proc/<pid>/stat`` counts the CPU of all a
process's threads; :func:`tree_cpu_s` and :func:`tree_rss_mb` add up every process of the tree.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


def all_cores() -> set[int]:
    """Every core this machine has (a child of a pinned process inherits its pinning)."""
    return set(range(os.cpu_count() or 1))


def _child_setup(cores: set[int] | None) -> None:
    # Between fork and exec: pin (threads and children made later inherit it), and have the
    # kernel send SIGTERM if the benchmark dies, even by SIGKILL (Linux only).
    if cores is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    cmd: Sequence[str],
    *,
    cores: set[int] | None,
    env: dict[str, str] | None = None,
    stdout: IO[bytes] | int | None = subprocess.DEVNULL,
    stderr: IO[bytes] | int | None = subprocess.STDOUT,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` on ``cores`` (None: inherit), in its own session (Ctrl-C reaches us only)."""
    return subprocess.Popen(
        list(cmd),
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        preexec_fn=lambda: _child_setup(cores),  # noqa: PLW1509 - no threads of ours yet
    )


def pin_all_threads(pid: int, core: int) -> None:
    """Pin every thread of every process of ``pid``'s tree (``pin()`` moves one thread only)."""
    if (os.cpu_count() or 1) < 2:
        return
    for p in tree_pids(pid):
        for task in _listdir(f"/proc/{p}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task), {core})


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _parent_of(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def tree_pids(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in _listdir("/proc"):
        if entry.isdigit() and (ppid := _parent_of(entry)) is not None:
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if Path(f"/proc/{pid}").exists():
            out.append(pid)
            todo.extend(children.get(pid, []))
    return out


def _cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_of(pid: int) -> dict[str, float]:
    """CPU seconds so far of a process's threads, summed by thread name (``comm``: chDB names
    its pools, ``MergeMutate``, ``ThreadPool``...; Python threads show as ``python``)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in _listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")].rstrip("0123456789").rstrip(":_-")
        fields = stat[stat.rindex(")") + 2 :].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def cpu_by_pid(root: int) -> dict[int, float]:
    """utime + stime (seconds, all threads) of each process of the tree."""
    return {pid: _cpu_s(pid) for pid in tree_pids(root)}


def cpu_delta_s(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU the tree used between two :func:`cpu_by_pid` snapshots (new processes from 0)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def rss_by_pid(root: int) -> dict[int, float]:
    """Resident memory (VmRSS) of each process of the tree, in MB."""
    out: dict[int, float] = {}
    for pid in tree_pids(root):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out[pid] = int(line.split()[1]) / 1024
    return out


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int | None:
    """SIGTERM the process (it stops its own children), wait; then SIGKILL the tree."""
    if proc.poll() is None:
        family = tree_pids(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            _kill(tree_pids(proc.pid))
            proc.wait(10)
        _kill(p for p in family if p != proc.pid and Path(f"/proc/{p}").exists())
    return proc.returncode


def _kill(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_until(
    check: Callable[[], bool], timeout_s: float, what: str, proc: subprocess.Popen[bytes]
) -> None:
    """Poll ``check()`` until true; fail early if ``proc`` exits, or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting")
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready within {timeout_s:.0f}s")


def core_times() -> dict[int, dict[str, float]]:
    """Per core: seconds since boot in processes (user+nice+system, what a process's
    utime+stime can account for), in interrupts (irq+softirq) and stolen, from /proc/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, dict[str, float]] = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, values[:8])
                out[int(name[3:])] = {
                    "busy": (user + nice + system) / tick,
                    "irq": (irq + softirq) / tick,
                    "steal": steal / tick,
                }
    return out


def core_busy(
    before: dict[int, dict[str, float]], after: dict[int, dict[str, float]], seconds: float
) -> dict[int, dict[str, float]]:
    """Per core: the fractions of ``seconds`` between two :func:`core_times` snapshots."""
    return {
        core: {k: (after[core][k] - before[core][k]) / seconds for k in after[core]}
        for core in after
        if core in before
    }
