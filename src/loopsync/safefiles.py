"""File operations in folders another party can write (the generic 3PL's shared folders).

The contract: loopsync never follows a symbolic link it did not create, and never writes
outside the folder it was given.

- Every operation works on a name inside an open folder descriptor (`dir_fd`), so a
  folder swapped for a link mid-run is not followed: the folder itself is opened with
  O_NOFOLLOW, and names are single path components (`safe_name`), never `..` or `a/b`.
- Reads open with O_NOFOLLOW | O_NONBLOCK and accept only a regular file (a FIFO would
  block, a device would never end, a link points anywhere).
- New files are created with O_CREAT | O_EXCL | O_NOFOLLOW (never through a link, never
  over another file); a final name is taken by rename (which replaces a name, never
  writes through a link) only after lstat shows no link is there.
- Moves never overwrite: renameat2(RENAME_NOREPLACE) (atomic; Linux), else a hard link
  to the free name (atomic, fails if it exists) then the old name goes, else (no hard
  links on the filesystem) a checked rename.
- An inbox file with other hard links is refused like a symbolic link: its other name may
  be any file the worker can read.

Errors are the OS's own `OSError`s (ELOOP for a link, EINVAL for a non-regular file);
callers turn them into the connector's errors.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
NAME_MAX = 200  # below the usual 255-byte limit, leaving room for .N and .reason.txt
_RENAME_NOREPLACE = 1  # linux/fs.h


def _load_renameat2() -> object | None:
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except OSError:  # no C library to ask (not Linux): the hard-link path serves
        return None


_renameat2 = _load_renameat2()


def safe_name(name: str) -> str:
    """`name` when it is one harmless path component; ValueError otherwise. Names that
    come from remote data (an RMA number) pass here before they touch the filesystem."""
    if not name or name in (".", "..") or name.startswith("."):
        raise ValueError(f"{name!r} cannot be a file name (empty, hidden or a parent link)")
    if any(c in name for c in "/\\\0") or any(ord(c) < 32 for c in name):
        raise ValueError(f"{name!r} cannot be a file name (path separator or control character)")
    if len(name.encode("utf-8", "surrogatepass")) > NAME_MAX:
        raise ValueError(f"file name of {len(name)} characters is too long")
    return name


@dataclass(frozen=True)
class Stamp:
    """Identity of a file as read: unchanged since then when all three match."""

    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Stamp:
        return cls(st.st_ino, st.st_size, st.st_mtime_ns)


@contextmanager
def open_folder(path: Path, *, create: bool = False) -> Iterator[int]:
    """A descriptor of the folder at `path`, not following a link at its last component
    (the operator's configured path may itself go through links; a link planted in place
    of the folder is refused with ELOOP or ENOTDIR)."""
    if create:
        path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, _DIR_FLAGS)
    try:
        yield fd
    finally:
        os.close(fd)


def entries(folder_fd: int) -> list[tuple[str, str]]:
    """(name, kind) of every entry, kind being file, link or other; never followed."""
    out = []
    with os.scandir(folder_fd) as it:
        for entry in it:
            if entry.is_symlink():
                kind = "link"
            elif entry.is_file(follow_symlinks=False):
                kind = "file"
            else:
                kind = "other"
            out.append((entry.name, kind))
    return out


def lstat(folder_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def read_regular(
    folder_fd: int, name: str, *, limit: int, single_link: bool = False
) -> tuple[bytes, Stamp]:
    """The bytes of a regular file and its stamp. ELOOP for a link (with `single_link`, a
    file with other hard links too), EINVAL for anything not a regular file, EFBIG beyond
    `limit` bytes."""
    fd = os.open(safe_name(name), _READ_FLAGS, dir_fd=folder_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", name)
        if single_link and st.st_nlink > 1:
            raise OSError(errno.ELOOP, "has other hard links", name)
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", name)
        chunks, total = [], 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > limit:
                raise OSError(errno.EFBIG, f"larger than {limit} bytes", name)
            chunks.append(chunk)
        return b"".join(chunks), Stamp.of(st)
    finally:
        os.close(fd)


def create_exclusive(folder_fd: int, name: str, data: bytes, *, mode: int = 0o666) -> None:
    """Write a new file under `name`; FileExistsError when anything (a link too) is
    there. Durable: fsync of the file and the folder."""
    fd = os.open(safe_name(name), _CREATE_FLAGS, mode, dir_fd=folder_fd)  # umask applies
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_folder(folder_fd)


def replace_atomically(folder_fd: int, name: str, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename over `name`: a reader sees the whole
    file or nothing. ELOOP when a link (or anything but a regular file) holds `name`:
    the rename would not follow it, but a planted link means someone is probing."""
    safe_name(name)
    tmp = f".{name}.{uuid.uuid4().hex[:8]}.tmp"
    fd = os.open(tmp, _CREATE_FLAGS, 0o666, dir_fd=folder_fd)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        _refuse_non_regular(folder_fd, name)
        os.replace(tmp, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=folder_fd)
        except OSError:
            pass
        raise
    fsync_folder(folder_fd)


def move_no_clobber(src_fd: int, name: str, dst_fd: int, *, reserve: str = "") -> str:
    """Move `name` from one folder to another under the first free name (`name`,
    `stem.1.ext`, ...), never over anything; returns the name used. With `reserve`, the
    name chosen also leaves `<name><reserve>` free (a reason file beside it)."""
    safe_name(name)
    for candidate in _candidates(name):
        if reserve and lstat(dst_fd, candidate + reserve) is not None:
            continue
        moved = _rename_noreplace(src_fd, name, dst_fd, candidate)
        if moved is False:
            continue  # taken: the next name
        if moved:
            fsync_folder(dst_fd)
            fsync_folder(src_fd)
            return candidate
        try:
            # A hard link is an atomic "create if absent", and links the entry itself
            # (follow_symlinks=False), never what a link points to.
            os.link(name, candidate, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in (
                errno.EPERM,
                errno.ENOTSUP,
                errno.EOPNOTSUPP,
                errno.EXDEV,
                errno.EMLINK,
                errno.ENOSYS,
            ):
                raise
            return _move_without_links(src_fd, name, dst_fd, candidate, exc.errno)
        os.unlink(name, dir_fd=src_fd)
        fsync_folder(dst_fd)
        fsync_folder(src_fd)
        return candidate
    raise AssertionError("unreachable")  # pragma: no cover


def _rename_noreplace(src_fd: int, name: str, dst_fd: int, target: str) -> bool | None:
    """renameat2(RENAME_NOREPLACE): True when moved, False when `target` exists, None when
    this system or filesystem cannot (then the hard-link path is used)."""
    if _renameat2 is None:
        return None
    call: Any = _renameat2
    rc = call(src_fd, os.fsencode(name), dst_fd, os.fsencode(target), _RENAME_NOREPLACE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        return False
    if err in (
        errno.ENOSYS,
        errno.EINVAL,
        errno.ENOTSUP,
        errno.EOPNOTSUPP,
        errno.EXDEV,
        errno.EPERM,
    ):
        return None
    raise OSError(err, os.strerror(err), name)


def _move_without_links(
    src_fd: int, name: str, dst_fd: int, candidate: str, why: int | None
) -> str:
    """Filesystems without hard links: a rename after checking the name is free (a tiny
    race, only against the folder's other writer), or across filesystems a copy into an
    exclusively created file."""
    for target in itertools.chain([candidate], _candidates(candidate)):
        if lstat(dst_fd, target) is not None:
            continue
        if why != errno.EXDEV:
            os.rename(name, target, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        else:
            data, _ = read_regular(src_fd, name, limit=1 << 40)
            try:
                create_exclusive(dst_fd, target, data)
            except FileExistsError:
                continue
            os.unlink(name, dir_fd=src_fd)
        fsync_folder(dst_fd)
        return target
    raise AssertionError("unreachable")  # pragma: no cover


def _candidates(name: str) -> Iterator[str]:
    stem, dot, ext = name.rpartition(".")
    if not stem:
        stem, dot, ext = name, "", ""
    yield name
    for n in itertools.count(1):
        yield f"{stem}.{n}{dot}{ext}"


def _refuse_non_regular(folder_fd: int, name: str) -> None:
    st = lstat(folder_fd, name)
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, "a symbolic link is in the way; not written through", name)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "something other than a regular file is in the way", name)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_folder(folder_fd: int) -> None:
    """Make a rename durable. Best effort: some network filesystems refuse it, and the
    file is already complete under its name."""
    try:
        os.fsync(folder_fd)
    except OSError:
        pass
