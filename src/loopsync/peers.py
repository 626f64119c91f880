"""Which shard's pod a webhook belongs to, and where that pod listens (pure; no I/O).

In a sharded fleet every pod loads every merchant's file but runs only the merchants it
owns (`serve --shard I/N`); a load balancer may hand a webhook to any pod. `Router.owner`
says whether a merchant is known here but owned by another shard (then web.py forwards the
request once to `PeerTemplate.url`, the owner's address from LOOPSYNC_SHARD_PEERS, e.g.
`http://loopsync-{index}.loopsync:9108`).

Guarantees: a template names scheme, host (with `{index}` in it) and port only -- no user
info, path, query or fragment -- so it can carry no secret; a forwarded URL is the
template's origin for that index plus the received target, and a target that could change
the host (anything outside a conservative set of path characters) is refused, so a
request never goes to a host other than the template's. A forwarded request carries
FORWARDED_HEADER, and a pod never forwards a request that carries it (no loops).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from loopsync.config import MerchantConfig
from loopsync.errors import UsageError
from loopsync.http import Origin, origin_of
from loopsync.shards import Shard, owner

PEERS_ENV = "LOOPSYNC_SHARD_PEERS"
PLACEHOLDER = "{index}"
FORWARDED_HEADER = "X-Loopsync-Forwarded"
# Only these characters of a received target are forwarded: a webhook path is
# /webhooks/<source>/<merchant> (and perhaps a plain query); '@', '\\', '#', spaces and
# control characters, which parsers read differently, are never sent on.
_TARGET = re.compile(r"/webhooks/[A-Za-z0-9\-._~%/?=&+,;:]*\Z")
_HOST_PART = re.compile(r"[A-Za-z0-9\-.]*\{index\}[A-Za-z0-9\-.]*\Z")


@dataclass(frozen=True)
class PeerTemplate:
    """`scheme://host-with-{index}:port`, checked once when `serve` starts."""

    text: str

    @classmethod
    def parse(cls, text: str) -> PeerTemplate:
        text = text.strip()
        scheme, sep, rest = text.partition("://")
        host, colon, port = rest.partition(":")
        if (
            not sep
            or scheme not in ("http", "https")
            or text.count(PLACEHOLDER) != 1
            or not _HOST_PART.match(host)
            or (colon and not (port.isdigit() and 0 < int(port) < 65536))
        ):
            raise UsageError(
                f"{PEERS_ENV}: expected http(s)://HOST:PORT with {PLACEHOLDER} in the host "
                "(e.g. http://loopsync-{index}.loopsync:9108), and no user, path or query"
            )
        template = cls(text)
        template.origin(0)  # the standard library and urllib3 must read it alike
        return template

    def origin(self, index: int) -> Origin:
        try:
            return origin_of(self.text.replace(PLACEHOLDER, str(index)))
        except ValueError:
            raise UsageError(f"{PEERS_ENV}: not a usable http(s) address") from None

    def url(self, index: int, target: str) -> str | None:
        """The owner's URL for a received target; None when the target is not a plain
        webhook path or the result would leave the template's origin."""
        if index < 0 or not _TARGET.match(target):
            return None
        url = self.text.replace(PLACEHOLDER, str(index)) + target
        try:
            same = origin_of(url) == self.origin(index)
        except (ValueError, UsageError):
            return None
        return url if same else None


def template_from_env(env: Mapping[str, str]) -> PeerTemplate | None:
    text = (env.get(PEERS_ENV) or "").strip()
    return PeerTemplate.parse(text) if text else None


@dataclass(frozen=True)
class Elsewhere:
    """A known merchant owned by another shard: where to send its webhooks (no template:
    nowhere, answered 503 so the sender retries)."""

    index: int
    template: PeerTemplate | None


class Router:
    """A pod's view of the fleet: every loaded merchant and this pod's shard."""

    def __init__(
        self,
        shard: Shard,
        everyone: Callable[[], Sequence[MerchantConfig]],
        template: PeerTemplate | None,
    ) -> None:
        self.shard, self.everyone, self.template = shard, everyone, template

    def elsewhere(self, merchant: str) -> Elsewhere | None:
        """None for a merchant this pod owns or does not know (handled here as always)."""
        if self.shard.owns(merchant) or not any(c.merchant == merchant for c in self.everyone()):
            return None
        return Elsewhere(owner(merchant, self.shard.count), self.template)
