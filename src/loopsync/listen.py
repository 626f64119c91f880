"""Where `serve --http` listens, read from text (`--http` or $LOOPSYNC_HTTP): one reading
shared by the listener (`web`) and the image's health probe (`healthcheck`), which must
not import `web` (and prometheus with it): a probe starts a process every 30 s."""

from __future__ import annotations

ADDRESS_ENV = "LOOPSYNC_HTTP"


def listener_address(text: str) -> tuple[str, int] | None:
    """HOST:PORT, [IPv6]:PORT or :PORT (all addresses) as (host, port); None when
    malformed."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        return None
    return host.removeprefix("[").removesuffix("]") or "0.0.0.0", int(port)  # noqa: S104 - asked for
