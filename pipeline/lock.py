"""One writer per output folder and per record file (docs/DESIGN.md §6).

Two runs on one output folder would both generate everything and overwrite each other, so
a run locks its folder, and a record store its file, for as long as it writes. The lock is
`fcntl.flock` on a lock file beside what it guards: the kernel drops it when its holder
ends, however it ends (`kill -9` included), so a lock file left behind never blocks a
later run; that run takes it over and says so. The file records the holder's pid, host
and start time, for the message a refused process gives. A lock is re-entrant within a
process: a run that holds its folder still opens the stores in it, and code that opens
one store twice does not lock itself out.

Only processes on machines that share the folder through a file system with working
`flock` see each other's locks (local disks do; NFS emulates it).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FOLDER_LOCK = "macaroon.lock"


class LockError(RuntimeError):
    """Another process holds the lock; the message names what, who, and what to do."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a lock, as its lock file says."""

    pid: int | None = None
    host: str | None = None
    started: str | None = None

    def describe(self) -> str:
        if self.pid is None:
            return "a process that has not written its details yet"
        return f"pid {self.pid} on host {self.host or '?'}, started {self.started or '?'}"


@dataclass
class _Held:
    fd: int
    count: int


_held: dict[Path, _Held] = {}
_guard = threading.Lock()


def acquire(lock_file: str | Path, target: str | Path | None = None) -> Path:
    """Take the lock on `target` through `lock_file`, or raise LockError at once.

    Never waits: a second run on the same output should stop before it loads a model,
    not queue up behind the first. Acquiring again in the same process only counts.
    Returns the lock's absolute path, which `release` takes (the working folder may
    change in between).
    """
    lock_file = Path(lock_file)
    key = lock_file.resolve()
    with _guard:
        if key in _held:
            _held[key].count += 1
            return key
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        _held[key] = _Held(_lock(lock_file, Path(target) if target else lock_file), 1)
    return key


def release(key: Path) -> None:
    """Give back one `acquire`; the last one removes the lock file and drops the lock."""
    with _guard:
        held = _held.get(key)
        if held is None:
            return
        held.count -= 1
        if held.count > 0:
            return
        del _held[key]
        # Removed while still locked: a process that opened this file meanwhile sees, once
        # it gets the lock, that the file is gone and starts again on a fresh one.
        try:
            os.unlink(key)
        except OSError:  # gone already, or the folder turned read-only: the lock still ends
            pass
        finally:
            os.close(held.fd)


@contextmanager
def hold(lock_file: str | Path, target: str | Path | None = None) -> Iterator[None]:
    """`acquire` for the length of a `with` block."""
    key = acquire(lock_file, target)
    try:
        yield
    finally:
        release(key)


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[None]:
    """The lock of a run on its output folder (created if missing): `with folder_lock(out):`."""
    with hold(Path(folder) / FOLDER_LOCK, folder):
        yield


def _lock(lock_file: Path, target: Path) -> int:
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _parse(os.pread(fd, 4096, 0))
            os.close(fd)
            raise LockError(
                f"{target} is in use by another macaroon process ({holder.describe()}); "
                "wait for it to finish, or use another --out"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, lock_file):
            break
        os.close(fd)  # its holder removed it as we opened it: lock the current one
    try:
        previous = os.pread(fd, 4096, 0)
        if previous.strip():
            # Written by a holder that never released it: it was killed or crashed.
            log.warning(
                "%s: taking over the lock of %s, which ended without releasing it",
                target, _parse(previous).describe(),
            )  # fmt: skip
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _parse(data: bytes) -> Holder:
    try:
        info = json.loads(data)
        return Holder(int(info["pid"]), info.get("host"), info.get("started"))
    except (ValueError, KeyError, TypeError):  # empty or half-written by a starting holder
        return Holder()


def _forget_in_child() -> None:
    # A forked child shares the parent's lock through the inherited descriptors; closing
    # them here (without unlocking) lets the lock end with the parent, not with the last
    # of its workers, and keeps the child from believing it holds the lock.
    global _guard
    for held in _held.values():
        os.close(held.fd)
    _held.clear()
    _guard = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_forget_in_child)
