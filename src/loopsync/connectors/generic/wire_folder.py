"""The generic 3PL through shared folders: outbox RMA files, inbox receipt files.

The 3PL can write these folders too: nothing here follows a symbolic link it did not
create or writes outside the configured folders (`loopsync.safefiles`). Files move to
`archive/` (or `rejected/` with a reason) only in `commit`, once the engine has stored
what they said. Folder layout and file formats: the package docstring
(docs/api/generic.md).
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from loopsync import redaction, safefiles
from loopsync.connectors.generic.mapping import (
    SYSTEM,
    HeldRecord,
    ReceiptLine,
    ReceiptRead,
    parse_receipt_file,
    rma_csv,
)
from loopsync.connectors.generic.settings import GenericSettings
from loopsync.errors import Rejected, TransientError
from loopsync.models import RmaRef

log = structlog.get_logger("loopsync.connectors.generic")


@dataclass(frozen=True)
class _InboxFile:
    name: str
    stamp: safefiles.Stamp  # inode, size, mtime: unchanged since it was read?


# A receipt file bigger than this is refused, not read into memory (a 3PL's daily file is
# kilobytes; this is thousands of times that).
MAX_RECEIPT_FILE = 64 << 20


class FolderTransport:
    """Shared folders the 3PL can write too: nothing here follows a symbolic link it did
    not create or writes outside the configured folders (`loopsync.safefiles`)."""

    def __init__(self, conf: GenericSettings) -> None:
        self.conf = conf

    def has_rma(self, rma_number: str) -> bool:
        name = _rma_file_name(rma_number)
        return any(_is_regular(folder, name) for folder in (self.conf.outbox, self.conf.archive))

    def deliver(self, record: dict[str, Any]) -> None:
        name = _rma_file_name(record["rma_number"])
        try:
            with safefiles.open_folder(self.conf.outbox) as outbox:
                safefiles.replace_atomically(outbox, name, rma_csv(record).encode("utf-8"))
        except OSError as exc:  # a link in the way too: reported, retried, never followed
            raise TransientError(
                SYSTEM, f"cannot write {self.conf.outbox / name}: {exc.strerror or exc}"
            ) from None

    def read_receipts(self, rmas: Sequence[RmaRef]) -> ReceiptRead:
        lines: list[ReceiptLine] = []
        applied: list[_InboxFile] = []
        rejected: list[tuple[_InboxFile, str]] = []
        refused: list[HeldRecord] = []
        try:
            with safefiles.open_folder(self.conf.inbox) as inbox:
                for name in self._inbox_files(inbox, refused):
                    try:
                        data, stamp = safefiles.read_regular(
                            inbox, name, limit=MAX_RECEIPT_FILE, single_link=True
                        )
                    except FileNotFoundError:
                        continue  # taken away by the 3PL meanwhile
                    except (OSError, ValueError) as exc:
                        refused.append(HeldRecord(None, _refusal(name, exc)))
                        continue
                    seen = _InboxFile(name, stamp)
                    try:
                        lines.extend(parse_receipt_file(data))
                        applied.append(seen)
                    except ValueError as exc:
                        rejected.append((seen, redaction.redact(str(exc))))  # goes to a file
        except OSError as exc:
            raise TransientError(
                SYSTEM, f"cannot read inbox {self.conf.inbox}: {exc.strerror or exc}"
            ) from None
        log.info(
            "generic.inbox_read",
            files=len(applied),
            rejected=len(rejected),
            refused=len(refused),
            lines=len(lines),
        )
        # The whole file waits in rejected/ for the 3PL; `loopsync status` says why.
        held = refused + [
            HeldRecord(None, f"receipt file {seen.name} rejected: {reason}")
            for seen, reason in rejected
        ]

        def commit() -> None:
            with safefiles.open_folder(self.conf.inbox) as inbox:
                for seen in applied:
                    self._move_aside(inbox, seen, self.conf.archive)
                for seen, reason in rejected:
                    moved = self._move_aside(inbox, seen, self.conf.rejected, reserve=REASON_SUFFIX)
                    if moved is not None:
                        _write_reason(self.conf.rejected, moved, reason + "\n")
                        log.warning("generic.receipt_file_rejected", file=moved, reason=reason)

        return ReceiptRead(lines, held, commit)

    def archived_receipts(self, rma_numbers: set[str]) -> list[ReceiptLine]:
        """Receipt lines of these RMAs in archive/, where every file read before went once
        its lines were kept: with that state lost they are nowhere else. Same keys as when
        first read (file hash and row), so nothing counts twice. A file that is not a
        readable receipt file (an RMA file the 3PL archived, a link) is passed over."""
        lines: list[ReceiptLine] = []
        try:
            with safefiles.open_folder(self.conf.archive) as archive:
                for name, kind in sorted(safefiles.entries(archive)):
                    if kind != "file" or name.startswith(".") or not name.lower().endswith(".csv"):
                        continue
                    try:
                        data, _ = safefiles.read_regular(
                            archive, name, limit=MAX_RECEIPT_FILE, single_link=True
                        )
                        found = parse_receipt_file(data)
                    except (OSError, ValueError):
                        continue
                    lines += [line for line in found if line.rma_number in rma_numbers]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise TransientError(
                SYSTEM, f"cannot read archive {self.conf.archive}: {exc.strerror or exc}"
            ) from None
        log.info("generic.archive_read", rmas=len(rma_numbers), lines=len(lines))
        return lines

    @staticmethod
    def _inbox_files(inbox: int, refused: list[HeldRecord]) -> list[str]:
        """Receipt files to read, oldest first. A link or anything but a regular file is
        refused, named, and neither read nor quoted: it could point outside the share."""
        names = []
        for name, kind in safefiles.entries(inbox):
            if name.startswith(".") or not name.lower().endswith(".csv"):
                continue
            if kind != "file":
                what = "a symbolic link" if kind == "link" else "not a regular file"
                refused.append(
                    HeldRecord(
                        None,
                        f"inbox entry {name!r} is {what}: not read "
                        "(loopsync reads only regular files)",
                    )
                )
                continue
            names.append(name)

        def age(name: str) -> tuple[int, str]:
            st = safefiles.lstat(inbox, name)
            return (st.st_mtime_ns if st else 0, name)

        return sorted(names, key=age)

    def _move_aside(
        self, inbox: int, seen: _InboxFile, folder: Path, *, reserve: str = ""
    ) -> str | None:
        """Move a read file out of the inbox, never over another file and never through a
        link; the name it got. None when the file changed or went since it was read:
        then it is read again next time, or is gone."""
        st = safefiles.lstat(inbox, seen.name)
        if st is None or not stat.S_ISREG(st.st_mode) or safefiles.Stamp.of(st) != seen.stamp:
            return None
        try:
            with safefiles.open_folder(folder, create=True) as target:
                return safefiles.move_no_clobber(inbox, seen.name, target, reserve=reserve)
        except FileNotFoundError:
            return None
        except OSError as exc:  # stays in the inbox; applied again harmlessly next time
            log.warning(
                "generic.move_aside_failed",
                file=seen.name,
                folder=str(folder),
                error=exc.strerror or str(exc),
            )
            return None

    def close(self) -> None:
        """Nothing held open between calls."""


REASON_SUFFIX = ".reason.txt"


def _write_reason(folder: Path, moved: str, text: str) -> None:
    """`<moved>.reason.txt` beside the rejected file, created exclusively: a link or file
    already at that name is left alone, never written through."""
    try:
        with safefiles.open_folder(folder) as fd:
            safefiles.create_exclusive(fd, moved + REASON_SUFFIX, text.encode("utf-8"))
    except OSError as exc:
        log.warning(
            "generic.reason_file_not_written",
            file=moved + REASON_SUFFIX,
            error=exc.strerror or str(exc),
        )


def _refusal(name: str, exc: BaseException) -> str:
    """Why an inbox file was not read, naming the file and never what a link points to."""
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        why = "is a link (symbolic, or a file with other hard links)"
    elif isinstance(exc, OSError):
        why = exc.strerror or "cannot be read"
    else:
        why = str(exc)
    return f"inbox entry {name!r} not read: {why}"


def _is_regular(folder: Path, name: str) -> bool:
    """A regular file (not a link to one) under `name` in `folder`."""
    try:
        with safefiles.open_folder(folder) as fd:
            st = safefiles.lstat(fd, name)
    except FileNotFoundError:
        return False
    return st is not None and stat.S_ISREG(st.st_mode)


def write_atomically(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename: a reader sees the whole file under its
    final name or nothing; never through a link. TransientError when it did not happen."""
    try:
        with safefiles.open_folder(path.parent) as folder:
            safefiles.replace_atomically(folder, path.name, data)
    except (OSError, ValueError) as exc:
        raise TransientError(
            SYSTEM, f"cannot write {path}: {getattr(exc, 'strerror', None) or exc}"
        ) from None


def _rma_file_name(rma_number: str) -> str:
    """The RMA's file name; an RMA number that is not a harmless file name (`..`, a
    slash, a control character) is refused rather than turned into a path."""
    try:
        return safefiles.safe_name(f"{rma_number}.csv")
    except ValueError as exc:
        raise Rejected(SYSTEM, f"RMA number {rma_number!r} cannot name a file: {exc}") from None
