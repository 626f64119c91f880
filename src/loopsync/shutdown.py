"""How the process meets SIGTERM, SIGINT and SIGHUP (`run`, `import`, `serve`).

- The first SIGTERM or SIGINT asks for a shutdown: the main thread sets the cycles' stop
  event, each cycle finishes or abandons its current request (a retry or rate-limit wait
  ends at once: `timeutil.SystemClock` raises StopRequested), checkpoints, records its
  run as `stopped`, and the command exits (`run`/`import`: 128 + the signal number, 130
  for SIGINT, 143 for SIGTERM; `serve`: 0, a normal stop).
- A second SIGTERM or SIGINT forces the exit at once with 128 + the signal number; a run
  cut short this way keeps its row as `running`, which `status` shows as interrupted.
- SIGHUP asks `serve` to re-read its configuration files.

The handlers only record what arrived. A handler runs in the main thread between two
bytecodes, so one that set a threading.Event could deadlock on the lock the main thread
already holds inside that Event; the main thread polls `Shutdown` between short naps
and sets the stop event itself. Handlers are installed first thing in `main` (and in
`python -m loopsync` before the CLI is even imported), so a signal during start-up is
honoured rather than killing the process.
"""

from __future__ import annotations

import contextvars
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
NAP = 0.2  # seconds between looks at what arrived: a shutdown starts within this
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Shutdown:
    """What arrived, for the main thread to act on."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._reload = False
        self._previous: dict[int, Any] = {}

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """128 + the signal number (130 SIGINT, 143 SIGTERM), the shells' convention."""
        return 128 + (self.signum or 0)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def install(self) -> Shutdown:
        """Record SIGTERM/SIGINT/SIGHUP from now on; idempotent (what arrived is kept).
        Only the main thread may install handlers; elsewhere this is a no-op."""
        if self.installed or threading.current_thread() is not threading.main_thread():
            return self
        for sig in (*STOP_SIGNALS, signal.SIGHUP):
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def restore(self) -> None:
        """Put the previous handlers back and forget what arrived."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        self.signum = None
        self._reload = False

    def take_reload(self) -> bool:
        """Was SIGHUP received since the last call?"""
        asked, self._reload = self._reload, False
        return asked

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
            return
        if self.signum is not None:
            _force_exit(signum)
        self.signum = signum

    # -- the main thread's side ---------------------------------------------------------
    def watch(
        self,
        stop: threading.Event,
        until: Callable[[], bool],
        nap: Callable[[float], Any] | None = None,
    ) -> None:
        """Nap until `until()` holds; set `stop` when a shutdown is asked for. `nap`:
        how to wait (it may return early), by default a plain timed wait."""
        # An Event never set: only its timed wait is used, as a sleep.
        nap = nap or threading.Event().wait
        while not until():
            if self.requested and not stop.is_set():
                _log().warning(
                    "shutdown.requested",
                    signal=self.name,
                    then="finishing the current request, then stopping",
                    again="exits at once",
                )
                stop.set()
            nap(NAP)
        if self.requested:
            stop.set()

    def drain(self, worker: threading.Thread, grace: float) -> bool:
        """After a stop: wait for `worker` at most `grace` seconds (its current request's
        time; a second signal ends it sooner). False when it is left behind: a request
        that outlives every timeout must not hold the process past its stop."""
        for _ in range(max(1, int(grace / NAP))):  # counted naps: no clock read here
            worker.join(NAP)
            if not worker.is_alive():
                return True
        _log().warning(
            "shutdown.left_running",
            grace=grace,
            note="the current request outlived the grace; exiting without it",
        )
        return False

    def supervise(self, work: Callable[[threading.Event], T], *, grace: float = 60.0) -> T | None:
        """Run `work(stop)` in a worker thread while the main thread watches for signals:
        the main thread never blocks in a socket or in SQLite, so a signal is acted on at
        once. `work`'s exception is raised here. After a stop, `work` has `grace` seconds
        to finish (None is returned when it did not)."""
        stop = threading.Event()
        if self.requested:
            stop.set()  # arrived during start-up: nothing is started
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["result"] = work(stop)
            except BaseException as exc:  # handed to the main thread
                box["error"] = exc

        context = contextvars.copy_context()  # log lines keep their bound fields
        worker = threading.Thread(
            target=context.run, args=(target,), name="loopsync-work", daemon=True
        )
        worker.start()
        # Joining as the nap: the command ends the moment its work does.
        self.watch(stop, until=lambda: not worker.is_alive() or stop.is_set(), nap=worker.join)
        if worker.is_alive() and not self.drain(worker, grace):
            return None
        if "error" in box:
            raise box["error"]
        return box.get("result")


def _log() -> Any:
    # structlog is imported here, not at the top: `python -m loopsync` imports this
    # module before anything else so that the handlers exist as early as possible.
    import structlog

    return structlog.get_logger("loopsync.shutdown")


def _say(text: str) -> None:
    try:
        os.write(2, (text + "\n").encode())
    except OSError:
        pass


def _force_exit(signum: int) -> None:
    """A second signal: leave now. The kernel drops the merchant locks, SQLite rolls back
    an open transaction on the next open, and the ledger looks up what was in flight."""
    _say(f"loopsync: {signal.Signals(signum).name} again: exiting now")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a stream mid-write in this thread: skip it
            pass
    os._exit(128 + signum)


# The process's one instance: `python -m loopsync` installs it before importing the CLI.
PROCESS = Shutdown()
