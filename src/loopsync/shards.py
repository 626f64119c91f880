"""Which shard runs which merchant: rendezvous (highest-random-weight) hashing, pure.

    owner("acme", 4)          the index, 0..3, of the shard that runs acme
    parse_shard("2/4")        Shard(index=2, count=4); anything else is a UsageError
    shard_from_env(os.environ)  the shard a StatefulSet pod is (LOOPSYNC_SHARD=auto)
    resolve("0/4", os.environ)  serve's shard: --shard and the environment must agree
    plan(["acme", ...], 3, 4) the merchants that move, and from where to where

Each merchant gets a weight per shard, blake2b over the shard index and the merchant name
(stable across processes, machines and Python versions: never `hash()`, which is salted
per process), and belongs to the shard with the highest weight. Going from N to N+1
shards therefore moves a merchant only when the new shard outweighs its old one: about
1/(N+1) of the merchants move, all of them to the new shard, and no merchant moves
between two old shards. A merchant's owner depends on its name and N only, so every pod
of a fleet agrees without talking to the others.

Environment (`serve` without `--shard`): LOOPSYNC_SHARD is `I/N`, or `auto` for a
StatefulSet pod: N from LOOPSYNC_SHARD_COUNT (the manifests copy `spec.replicas` there),
I from LOOPSYNC_SHARD_INDEX (the `apps.kubernetes.io/pod-index` label, through the
downward API) or else the ordinal at the end of the pod's name ($HOSTNAME, `loopsync-3`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from loopsync.errors import UsageError

SHARD_ENV = "LOOPSYNC_SHARD"
COUNT_ENV = "LOOPSYNC_SHARD_COUNT"
INDEX_ENV = "LOOPSYNC_SHARD_INDEX"
AUTO = "auto"
# A fleet of 10,000 merchants at a few hundred a pod needs tens of shards; a count past
# this is a typo (and would cost a hash per shard per merchant at every reload).
MAX_SHARDS = 1024
_SHARD = re.compile(r"([0-9]{1,4})/([0-9]{1,4})")
_ORDINAL = re.compile(r"-([0-9]{1,4})\Z")


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0-based, as StatefulSet ordinals are)."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, merchant: str) -> bool:
        return owner(merchant, self.count) == self.index


@dataclass(frozen=True)
class Move:
    """One merchant that changes shard when the count changes."""

    merchant: str
    source: int
    target: int


def weight(merchant: str, index: int) -> int:
    """The merchant's weight on shard `index`: 64 bits of blake2b, the same everywhere."""
    digest = hashlib.blake2b(
        f"{index}\x00{merchant}".encode("utf-8", "surrogatepass"),
        digest_size=8,
        person=b"loopsync-shard",
    ).digest()
    return int.from_bytes(digest, "big")


def owner(merchant: str, count: int) -> int:
    """The shard (0..count-1) that runs `merchant`: the highest weight wins; a tie (one in
    2**64) goes to the lower index, so the answer is still the same everywhere."""
    if count < 1:
        raise ValueError("a shard count is at least 1")
    return max(range(count), key=lambda i: (weight(merchant, i), -i))


def plan(merchants: Iterable[str], old: int, new: int) -> list[Move]:
    """The merchants whose owner differs between `old` and `new` shards, by name."""
    moves = (Move(m, owner(m, old), owner(m, new)) for m in sorted(set(merchants)))
    return [m for m in moves if m.source != m.target]


def parse_count(text: str, what: str = "shard count") -> int:
    """A shard count given by an operator, 1..MAX_SHARDS, or a UsageError naming it."""
    value = text.strip()
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_SHARDS:
        raise UsageError(f"{what} must be a whole number from 1 to {MAX_SHARDS}, not {_cut(text)}")
    return int(value)


def parse_shard(text: str, what: str = "--shard") -> Shard:
    """`I/N` with 0 <= I < N <= MAX_SHARDS, or a UsageError (one line, exit 2) naming
    `what` gave it (the flag, or the environment variable)."""
    match = _SHARD.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"{what} must be I/N (e.g. 0/4: shard 0 of 4), not {_cut(text)}")
    index, count = int(match[1]), int(match[2])
    if not 1 <= count <= MAX_SHARDS:
        raise UsageError(f"{what} {text.strip()}: the count must be 1 to {MAX_SHARDS}")
    if index >= count:
        raise UsageError(
            f"{what} {text.strip()}: shards are numbered 0 to {count - 1}, not {index}"
        )
    return Shard(index, count)


def shard_from_env(env: Mapping[str, str]) -> Shard | None:
    """The shard the environment names (see the module docstring); None when unset."""
    asked = env.get(SHARD_ENV, "").strip()
    if not asked:
        return None
    if asked != AUTO:
        return parse_shard(asked, SHARD_ENV)
    count = parse_count(env.get(COUNT_ENV, ""), f"{SHARD_ENV}=auto needs {COUNT_ENV}: it")
    index_text = env.get(INDEX_ENV, "").strip()
    if not index_text:
        host = env.get("HOSTNAME", "").strip()
        ordinal = _ORDINAL.search(host)
        if ordinal is None:
            raise UsageError(
                f"{SHARD_ENV}=auto needs {INDEX_ENV} or a pod name ending in its ordinal "
                f"($HOSTNAME, e.g. loopsync-2), not {_cut(host)}"
            )
        index_text = ordinal[1]
    return parse_shard(f"{index_text}/{count}", f"{SHARD_ENV}=auto's shard")


def resolve(asked: str | None, env: Mapping[str, str]) -> Shard | None:
    """The shard `serve` runs: `--shard` (`asked`), else the environment's. Each pod of a
    fleet keeps its state on its own volume, so two pods that disagree on the shard
    arithmetic would both run a merchant, and no file lock sees the other: every source
    the operator set must name the same shard, or it is a UsageError (one line, exit 2).
    - `--shard` and LOOPSYNC_SHARD both given: the same shard;
    - LOOPSYNC_SHARD_COUNT given: the shard's count (an explicit `I/N` too), and a shard
      must be named at all (a pod told the fleet's size but no shard would run every
      merchant beside the shards)."""
    from_env = shard_from_env(env)
    shard = from_env if asked is None else parse_shard(asked)
    if asked is not None and from_env is not None and from_env != shard:
        raise UsageError(
            f"--shard {shard} disagrees with {SHARD_ENV} ({from_env}): "
            "set one, or the same shard in both"
        )
    count_text = env.get(COUNT_ENV, "").strip()
    if count_text:
        count = parse_count(count_text, COUNT_ENV)
        if shard is None:
            raise UsageError(
                f"{COUNT_ENV}={count} but no shard is named (--shard I/N or {SHARD_ENV}): "
                "this process would run every merchant beside the shards"
            )
        if shard.count != count:
            raise UsageError(
                f"shard {shard} disagrees with {COUNT_ENV}={count}: every pod must count "
                "the same shards"
            )
    return shard


def _cut(text: str, limit: int = 40) -> str:
    """An operator's typo shown back: a pasted file stays one short line."""
    return repr(text if len(text) <= limit else text[:limit] + "...")
