"""The image's HEALTHCHECK: `python -m loopsync.healthcheck [-c PATH ...]`.

Exit 0 healthy, 1 unhealthy (Docker reserves 2; every other failure is said as 1 too), and
one line saying why, which Docker keeps in `docker inspect`'s health log.

Which probe is decided by `choose`, from the environment alone:
- $LOOPSYNC_HTTP set (`serve`'s listener is on): GET /healthz there, over loopback when
  it listens on every address. 200 while the scheduler runs jobs (its heartbeat), so a
  wedged scheduler is unhealthy within 15 s. /healthz needs no token, so none is sent;
  no redirect is followed; one try, PROBE_TIMEOUT seconds. (Give the listener to the
  image as LOOPSYNC_HTTP, not `--http`: a probe cannot read another process's flags.)
- otherwise: `loopsync status --check -c PATH` (default /config): unhealthy while a
  merchant is STALLED or BLOCKED, or its state cannot be read. It reads the state files
  read-only and needs no secret. Slower to notice (a stall shows after
  `schedule.stalled_after`), but it is the signal a `serve` without a listener leaves.
  With $LOOPSYNC_SHARD set (serve --shard's environment), only that shard's merchants
  are checked, as /readyz does: another shard's state left on this volume is not ours.

The image has no curl: both probes are Python. The /healthz request uses the standard
library's http.client, not loopsync.http.HttpClient: it is this process asking its own
listener once, where HttpClient's retries, rate limits and backoff would only hide a
dead scheduler.
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO

from loopsync.listen import ADDRESS_ENV, listener_address

DEFAULT_CONFIG = "/config"
PROBE_TIMEOUT = 5.0
HEALTHY, UNHEALTHY = 0, 1
# A listener on every address is probed where this process can always reach it.
_ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - mapped, never bound


@dataclass(frozen=True)
class HttpProbe:
    host: str
    port: int


@dataclass(frozen=True)
class StatusProbe:
    configs: tuple[str, ...]
    shard: str | None = None  # serve's shard ($LOOPSYNC_SHARD...): only its merchants count


def choose(environ: Mapping[str, str], configs: Sequence[str]) -> HttpProbe | StatusProbe:
    """Pure: the listener's /healthz when $LOOPSYNC_HTTP names one, else status --check.
    A malformed $LOOPSYNC_HTTP is serve's to refuse (exit 2 at start): probed by status."""
    where = listener_address(environ.get(ADDRESS_ENV, ""))
    if where is not None:
        host, port = where
        return HttpProbe(_ANY_ADDRESS.get(host, host), port)
    return StatusProbe(tuple(configs) or (DEFAULT_CONFIG,), _shard_of(environ))


def _shard_of(environ: Mapping[str, str]) -> str | None:
    """The shard serve runs, as serve reads it from the environment; None for every
    merchant (a bad value is serve's to refuse at start: then every merchant is checked)."""
    from loopsync.errors import UsageError
    from loopsync.shards import resolve

    try:
        shard = resolve(None, environ)
    except UsageError:
        return None
    return None if shard is None else str(shard)


def probe_http(probe: HttpProbe, timeout: float = PROBE_TIMEOUT) -> tuple[int, str]:
    """GET /healthz once: (exit status, why). Anything but a 200 is unhealthy, whatever
    the server sends (a garbled answer, a reset, silence past the timeout)."""
    conn = http.client.HTTPConnection(probe.host, probe.port, timeout=timeout)
    try:
        conn.request("GET", "/healthz", headers={"Connection": "close"})
        answer = conn.getresponse()
        code = answer.status
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return UNHEALTHY, f"unhealthy: /healthz did not answer ({type(exc).__name__})"
    finally:
        conn.close()
    if code == 200:
        return HEALTHY, "healthy: /healthz 200"
    return UNHEALTHY, f"unhealthy: /healthz {code}"


def probe_status(probe: StatusProbe) -> tuple[int, str]:
    """`loopsync status --check` in this process: (exit status, why). A sharded serve is
    judged by its own merchants: another shard's (a state left behind by a reshard, on
    this volume) is that shard's to report."""
    from loopsync.cli import main as cli_main

    configs = probe.configs if probe.shard is None else _owned(probe.configs, probe.shard)
    if not configs:
        return HEALTHY, f"healthy: shard {probe.shard} owns no merchant"
    shown = io.StringIO()  # the full status is for a person; Docker keeps one line
    code = cli_main(["status", "--check", "--log-level", "error", "-c", *configs], out=shown)
    if code == 0:
        return HEALTHY, "healthy: status --check 0"
    return UNHEALTHY, f"unhealthy: status --check exited {code} (see loopsync status)"


def _owned(configs: tuple[str, ...], shard_text: str) -> tuple[str, ...]:
    """The files of the shard's merchants; every file as given when one does not load
    (status --check then says so: a bad file is unhealthy whatever its shard)."""
    from loopsync.config import ConfigFailure, load_each
    from loopsync.configkit import NoSecrets
    from loopsync.shards import parse_shard

    shard = parse_shard(shard_text)
    loaded = load_each(list(configs), NoSecrets())
    if any(isinstance(item, ConfigFailure) for item in loaded):
        return configs
    return tuple(
        c.file for c in loaded if not isinstance(c, ConfigFailure) and shard.owns(c.merchant)
    )


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    out: TextIO | None = None,
) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loopsync.healthcheck", description="the image's HEALTHCHECK"
    )
    parser.add_argument("-c", "--config", action="extend", nargs="+", default=[])
    args = parser.parse_args(argv)
    probe = choose(os.environ if environ is None else environ, args.config)
    code, why = probe_http(probe) if isinstance(probe, HttpProbe) else probe_status(probe)
    (out or sys.stdout).write(why + "\n")
    return code


if __name__ == "__main__":  # pragma: no cover - the image's HEALTHCHECK
    raise SystemExit(main())
