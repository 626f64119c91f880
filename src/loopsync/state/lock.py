"""The merchant lock: one worker per state file, across processes and within one.

An exclusive advisory lock (flock) on <state>.lock, which the kernel drops when the
process dies, so a SIGKILLed run never wedges the next one; the state file itself is
locked too, so a second name of it (a hard link) cannot let two workers in."""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from pathlib import Path

from loopsync.errors import LockHeld, StateUnwritable


def lock_is_held(state_path: Path) -> bool:
    """Is a worker running this merchant now? Probed with a shared lock, released at
    once, on an existing lock file only (looking must not create files)."""
    path = MerchantLock(state_path).path
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


# State files this process holds a MerchantLock on, by (device, inode), and the lock.
_held_states: dict[tuple[int, int], int] = {}
_held_lock = threading.Lock()


class MerchantLock:
    """An exclusive advisory lock on <state>.lock; the kernel drops it if we die, so a
    SIGKILLed run never wedges the next one."""

    def __init__(self, state_path: Path) -> None:
        # Keyed by the state file's real path: two paths to one file (a link, `..`, a
        # linked folder) must find the same lock, or two workers would run one merchant.
        self.state = Path(os.path.realpath(state_path))
        self.path = Path(f"{self.state}.lock")
        self._fd: int | None = None
        self._state_fd: int | None = None
        self._state_ident: tuple[int, int] = (0, 0)

    def acquire(self) -> MerchantLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:  # O_NOFOLLOW: truncating below must never reach a file a link points to
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            # A fault to fix, not a lock someone holds: exit 73, never 75 (which cron
            # treats as a skip, so the merchant would silently never run again).
            raise StateUnwritable(
                str(self.path), "is a symbolic link; loopsync will not lock through it (remove it)"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(f"another loopsync process holds {self.path}") from None
        self._fd = fd
        try:
            self._state_fd = self._lock_state_file()
        except BaseException:
            self.release()
            raise
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        return self

    def _lock_state_file(self) -> int | None:
        """A hard link is a second name no real path resolves to one: the existing state
        file itself is locked too (flock, which SQLite's own fcntl locks ignore), so two
        names of one file never let two workers write it, each with a -wal of its own.
        Within this process the file is checked by identity first: closing a descriptor
        of a file this process's SQLite has open would drop SQLite's locks on it."""
        try:
            st = self.state.stat()
        except OSError:
            return None  # not there yet: no second name of it can exist
        ident = (st.st_dev, st.st_ino)
        with _held_lock:
            if ident in _held_states:
                raise LockHeld(f"this process already works {self.state} (under another name)")
            try:
                fd = os.open(self.state, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                return None  # not a file we can lock: the Store names the fault
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LockHeld(
                    f"another loopsync process holds {self.state} (under another name)"
                ) from None
            except OSError:
                os.close(fd)
                return None
            _held_states[ident] = fd
        self._state_ident = ident
        return fd

    def release(self) -> None:
        state_fd, self._state_fd = self._state_fd, None
        if state_fd is not None:
            with _held_lock:
                _held_states.pop(self._state_ident, None)
                fcntl.flock(state_fd, fcntl.LOCK_UN)
                os.close(state_fd)
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> MerchantLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
