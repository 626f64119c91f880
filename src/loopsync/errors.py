"""Every error loopsync raises on purpose.

LoopsyncError
├── ConfigError            bad YAML file: names the file, the key path and the problem
├── UsageError             a command line the CLI cannot run (exit status 2)
├── LockHeld               another process works this merchant (exit status 75)
├── DryRunViolation        a write was attempted in a dry run (a bug, never expected)
├── Unreadable             one remote record cannot be read (names the field): held, never
│                          guessed; also a ValueError, so `except ValueError` sites hold it
├── StateError             the merchant's state file cannot be used (exit_code: sysexits)
│   ├── StateCorrupt       not a database, truncated, malformed, newer schema (65)
│   ├── StateUnwritable    its folder or file cannot be created or written (73)
│   └── StateIOError       disk full or an I/O error (74)
├── TransitionRefused      a guarded state update found its row in another state (or
│                          missing): nothing was changed (a bug or a race, never expected)
├── SocketFaultInProcess   a test scripted a fault only a socket can play (drip, cut
│                          body) for an emulator reached in process (loopsync.testing)
└── RemoteError            anything a remote system said or failed to say
    ├── TransientError     worth retrying later: 5xx, timeouts, resets, throttling
    │   ├── RateLimited    429 or a throttle body; carries retry_after seconds if known
    │   ├── DeadlineExceeded  no whole answer within the client's deadline (next cycle)
    │   ├── OutcomeUnknown a write was sent but its answer was lost; look up before repeating
    │   ├── XoroBusy       Xoro's `Result: false` that does not blame the request: retried
    │   └── PaginationStopped  a page walk ended before the remote's last page (cap, loop)
    └── PermanentError     retrying the same request will not help
        ├── AuthError      401/403 or a failed login
        ├── NotFound       the remote has no such object
        ├── ErrorBody      HTTP 200 whose body is an error (Loop, PeopleVox, Xoro do this)
        │   ├── StateConflict  Loop refused an action because of the return's state
        │   ├── PeopleVoxError  PeopleVox's `ResponseId -1`, with its Detail text
        │   │   └── InvalidSession  the session expired: log in again, repeat once
        │   └── XoroRefused  `Result: false` refusing the key or its scope (an AuthError too)
        ├── Rejected       the remote refused this record (bad SKU, unknown order, ...)
        │   └── Ambiguous  a match weaker than the Loop return id found several
        │                  candidates: reported for a person, never guessed
        ├── ForeignOrigin  a redirect or link to another origin; nothing was sent there
        └── ResponseTooLarge  the answer passed the size cap (after decompression)

StopRequested (a BaseException, like KeyboardInterrupt, so no catch-all swallows it)
                           shutdown was asked for while waiting: abandon the request

Connector signals (plain Exceptions, caught by the engine by name):
NotReady                   the warehouse is not ready for this return yet: try later
PollStopped                shutdown in the middle of a long poll: read again next run
"""

from __future__ import annotations

from loopsync.redaction import redact


class LoopsyncError(Exception):
    """Root of loopsync's own errors."""


class ConfigError(LoopsyncError):
    """A configuration file is wrong. The message names file, key path and problem."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem = redact(problem)  # a config error is printed: never a secret
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {problem}")


class UsageError(LoopsyncError):
    """A command line the CLI cannot run (argparse cannot tell: a combination of flags)."""


class LockHeld(LoopsyncError):
    """Another loopsync process holds this merchant's lock."""


class DryRunViolation(LoopsyncError):
    """A state-changing remote call was attempted during a dry run."""


class StateError(LoopsyncError):
    """A merchant's state file cannot be used. One line naming the file and the problem;
    `exit_code` is the sysexits code the command ends with."""

    exit_code = 74

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"state file {path}: {problem}")


class StateCorrupt(StateError):
    """Not a database, truncated, malformed, or written by a newer loopsync."""

    exit_code = 65  # EX_DATAERR


class StateUnwritable(StateError):
    """The state file or its folder cannot be created or written."""

    exit_code = 73  # EX_CANTCREAT


class StateIOError(StateError):
    """The disk is full, or reading or writing the file failed."""

    exit_code = 74  # EX_IOERR


class SocketFaultInProcess(LoopsyncError):
    """A fault that only a socket can play was scripted for an in-process emulator: the test
    must serve that emulator with `ApiServer` instead (raised by `loopsync.testing`)."""


class TransitionRefused(LoopsyncError):
    """A guarded update of a return's stage or an effect's status found the row in a state
    the transition does not start from, or no such row: the update changed nothing.
    `what` names the row ("return 12", "effect note:12"), `wanted` the target, `found` the
    row's state (None: no such row)."""

    def __init__(self, what: str, wanted: str, found: str | None) -> None:
        self.what = what
        self.wanted = wanted
        self.found = found
        where = f"from {found}" if found is not None else "(no such row)"
        super().__init__(f"{what}: refused to move to {wanted} {where}")


class StopRequested(BaseException):
    """Shutdown was requested while waiting (a backoff, a rate limit): the request is
    abandoned. A BaseException so that a per-record catch-all cannot swallow it."""


class NotReady(Exception):
    """The warehouse is not ready for this return yet (order not there, ...). Try later."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class PollStopped(Exception):
    """The worker is shutting down in the middle of a long poll: what was read so far is
    dropped (nothing was recorded from it) and read again on the next run."""


def _encodable(text: str) -> str:
    """`text` with each lone surrogate written as its escape (\\ud800): valid UTF-8."""
    text = str(text)
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class RemoteError(LoopsyncError):
    """A remote system failed or refused. `system` names it (loop, shiphero, ...)."""

    def __init__(
        self, system: str, message: str, *, status: int | None = None, code: str | None = None
    ) -> None:
        # Remote text (an error body, a fault string) may hold lone surrogates from a JSON
        # escape; a message that SQLite, a log file or a note cannot encode would turn
        # recording the error into a second, unexpected one.
        message, code = _encodable(message), (None if code is None else _encodable(code))
        self.system = system
        self.message = message
        self.status = status
        self.code = code
        parts = [system]
        if status is not None:
            parts.append(f"HTTP {status}")
        if code:
            parts.append(str(code))
        super().__init__(f"{' '.join(parts)}: {message}")


class TransientError(RemoteError):
    """Worth retrying: server errors, timeouts, connection resets, throttling."""


class RateLimited(TransientError):
    """The remote asked us to slow down; `retry_after` is its hint in seconds, if any."""

    def __init__(
        self,
        system: str,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = 429,
        code: str | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(system, message, status=status, code=code)


class DeadlineExceeded(TransientError):
    """A read got no complete answer within the whole-request deadline (a drip, a stall).
    Not retried within the call, which would multiply the wait; the next cycle retries."""


class XoroBusy(TransientError):
    """`Result: false` with a message that does not say the request is wrong: retried."""


class OutcomeUnknown(TransientError):
    """A non-idempotent request may or may not have taken effect."""


class PaginationStopped(TransientError):
    """A page walk ended before the remote's last page: a repeated token, a next link
    without a cursor, the page cap (`reason`, a `paging.WalkEnd` value or Loop's older
    names). Worth another try later; meanwhile what depends on the whole listing waits."""

    def __init__(
        self, reason: str, message: str, *, system: str = "loop", walk: object = None
    ) -> None:
        self.reason = reason
        self.walk = walk  # the paging.WalkResult, when a PageWalk ended it
        super().__init__(system, message, code=reason)


class PermanentError(RemoteError):
    """Retrying the same request will not help."""


class AuthError(PermanentError):
    """Credentials were refused (or a session could not be re-established)."""


class NotFound(PermanentError):
    """The remote has no such object."""


class ErrorBody(PermanentError):
    """HTTP 200 (or other 2xx) whose body says the call failed."""


class StateConflict(ErrorBody):
    """Loop refused process/flag/cancel/close because of the return's state.

    Recorded as settled: the return already left the state where the action applies.
    """


class PeopleVoxError(ErrorBody):
    """PeopleVox answered `ResponseId -1`; `detail` is its `Detail` text."""

    def __init__(self, operation: str, detail: str) -> None:
        self.operation = operation
        self.detail = detail
        super().__init__("peoplevox", f"{operation}: {detail}", code="ResponseId -1")


class InvalidSession(PeopleVoxError):
    """The session expired or is unknown; the client logs in again and retries once."""


class XoroRefused(AuthError, ErrorBody):
    """`Result: false` refusing the credentials or the key's module scope (under HTTP 200
    it is both a refusal of credentials and an error body)."""


class Rejected(PermanentError):
    """The remote refused this one record; the rest of the batch goes on."""


class ForeignOrigin(PermanentError):
    """A redirect or link pointed outside the configured origin(s); nothing (credentials,
    record) was sent there. `target` is the origin (scheme://host:port), never a path."""

    def __init__(
        self, system: str, message: str, *, target: str | None = None, status: int | None = None
    ) -> None:
        self.target = target
        super().__init__(system, message, status=status)


class ResponseTooLarge(PermanentError):
    """The answer was larger than the client's cap (counted after decompression)."""


class Ambiguous(Rejected):
    """Matching by something weaker than the Loop return id (an order number) found more
    than one candidate. The engine reports the return for a person and acts on none."""


class Unreadable(LoopsyncError, ValueError):
    """A record from a remote (a Loop return, an ASN row, a warehouse answer, a 3PL file)
    that loopsync cannot use. The reason names the field. The one error every parser of
    remote data raises, so the engine holds "this record" in one place and the rest of
    the batch goes on. A ValueError too, for callers that predate it."""

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        super().__init__(reason)
