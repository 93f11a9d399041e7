"""Spool slots: one directory per live process, owned through an ``flock()`` on its lock file
(a crashed owner's slot is adopted by the next process that finds it unlocked)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from pathlib import Path

LOCK_FILE = "lock"


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _try_lock(slot: Path) -> int | None:
    """An flock()ed descriptor on ``slot/lock``, or None if another process owns the slot."""
    path = slot / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        # Removal deletes the lock file after the data, so a lockless slot holds nothing.
        with contextlib.suppress(OSError):
            slot.rmdir()
        return None
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The owner may have removed the slot between our open() and flock().
        here, now = os.fstat(fd), os.stat(path)
        if (here.st_dev, here.st_ino) != (now.st_dev, now.st_ino):
            raise FileNotFoundError(path)
    except OSError:
        os.close(fd)
        return None
    return fd


def claim_slot(base_dir: Path) -> tuple[Path, int]:
    """A slot of ``base_dir`` no live process owns (a new one if none), with its locked fd."""
    base_dir.mkdir(parents=True, exist_ok=True)
    for slot in sorted(base_dir.glob("slot-*")):
        fd = _try_lock(slot)
        if fd is not None:
            return slot, fd
    # Lock the new slot under a name nobody scans, then publish it: no one can adopt it first.
    name = uuid.uuid4().hex
    fresh = base_dir / f".new-{name}"
    fresh.mkdir()
    fd = os.open(fresh / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        slot = base_dir / f"slot-{name}"
        fresh.rename(slot)
        fsync_dir(base_dir)
    except BaseException:
        os.close(fd)
        raise
    return slot, fd
