"""One `mer train` per run directory: an exclusive lock file, ``RUNDIR/train.lock``.

    with RunLock(run_dir) as lock:     # RunLocked (one line: who holds it) when another process has it
        ...                            # lock.taken_over: the notice when a dead process's lock was taken over

The lock is ``fcntl.flock`` on the file (the kernel releases it when its process ends, however it ends:
a SIGKILLed run leaves the file behind, but not the lock). The file holds who took it (pid, host, start
time, command line), so a second `mer train` into the same --out can say who is running there. A file
left by a process that is gone is taken over with a notice; it is removed when the lock is released.

Under torchrun only rank 0 takes the lock (the ranks of one job share the run directory by design,
mer.train.distributed); a second job's rank 0 is refused and, through the runner's collective start,
every rank of that job stops. Run directories on a network file system: flock works across machines on
NFSv4 (Linux emulates it with POSIX locks); where the file system refuses locks, the pid in the file
decides (a live process on this host, or any process on another host, counts as holding it).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_NAME = "train.lock"


class RunLocked(RuntimeError):
    """Another `mer train` holds the run directory (the message says who, and what to do)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _describe(info: dict) -> str:
    when = info.get("started")
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when)) if isinstance(when, (int, float)) else "?"
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started {started}"


def read_lock(path) -> dict:
    """The holder recorded in a lock file ({} when unreadable or empty)."""
    try:
        info = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


class RunLock:
    """The exclusive lock of a run directory (created if needed). ``acquire()`` raises RunLocked."""

    def __init__(self, root, *, command: str | None = None):
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self.command = command if command is not None else " ".join(sys.argv)
        self.fd: int | None = None
        self.taken_over: str | None = None  # the notice, when a stale lock file was taken over

    def acquire(self) -> RunLock:
        self.root.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # the file can be removed by its holder between our open and our flock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                flock_ok = True
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    info = read_lock(self.path)
                    os.close(fd)
                    raise RunLocked(self._refusal(info)) from None
                flock_ok = False  # e.g. ENOLCK: a file system without locks; the recorded pid decides
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # released and removed meanwhile: lock the new file
                os.close(fd)
                continue
            old = read_lock(self.path)
            if not flock_ok and old and self._held_by_live(old):
                os.close(fd)
                raise RunLocked(self._refusal(old))
            if old:
                self.taken_over = (
                    f"run directory {self.root}: took over the lock left by {_describe(old)} "
                    "(that process is gone; its finished folds are kept, its interrupted fold "
                    "resumes from its checkpoint)"
                )
            info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": self.command}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            os.fsync(fd)
            self.fd = fd
            return self
        raise RunLocked(
            f"run directory {self.root}: could not take {self.path} (it keeps being replaced); "
            "is another `mer train` starting there?"
        )

    @staticmethod
    def _held_by_live(info: dict) -> bool:
        if info.get("host") != socket.gethostname():
            return True  # cannot tell from here: assume it runs
        pid = info.get("pid")
        return isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid)

    def _refusal(self, info: dict) -> str:
        who = _describe(info) if info else "another process (no details recorded yet)"
        return (
            f"run directory {self.root} is in use by another `mer train` ({who}; lock file {self.path}). "
            "Wait for it to finish, stop it (its finished folds are kept, the interrupted fold resumes), "
            "or choose another --out"
        )

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding it: a waiting process re-opens the new file
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def take_lock(root, *, notify=None) -> RunLock:
    """Acquire the lock of run directory ``root`` (RunLocked if another `mer train` holds it); a stale lock
    left by a dead process is taken over with a notice (stderr and the run's events.log)."""
    lock = RunLock(root).acquire()
    if lock.taken_over:
        from mer.train.rundir import log_event

        (notify or (lambda m: print(f"notice: {m}", file=sys.stderr)))(lock.taken_over)
        log_event(root, lock.taken_over)
    return lock
