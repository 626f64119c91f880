"""Credentials refused: one clear reason per merchant, and a wait before the next try.

A 401/403 from Loop, a refused ShipHero refresh token or a refused PeopleVox login
(`errors.AuthError`) stops the merchant's cycle at once: every other request would be
refused the same way, and retrying once per return fills `status` with thousands of
identical problems. The refusal is kept in the state's `kv` table; later cycles wait
`backoff(failures)` (exponential, capped) after the last refusal before trying again,
unless the credentials themselves changed since (the operator fixed them), which is told
by a salted fingerprint, never by the secret. `status` shows the refusal.

Pure schedule first, then the small kv record.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from loopsync.timeutil import iso, parse_timestamp

KV_NAMESPACE = "loopsync.credentials"
KV_KEY = "refused"
# First wait 5 minutes, doubling per refusal in a row, at most 6 hours: a token fixed by
# hand is picked up at once anyway (fingerprint), so the cap only bounds the noise.
BACKOFF_BASE = timedelta(minutes=5)
BACKOFF_CAP = timedelta(hours=6)


@dataclass(frozen=True)
class Refusal:
    system: str  # who refused: loop, shiphero, peoplevox, xoro, generic
    message: str  # what it said (redacted), for `status`
    first_at: datetime  # first refusal of this run of refusals
    last_at: datetime
    failures: int  # refusals in a row
    retry_at: datetime  # no cycle contacts any remote before this
    salt: str
    fingerprint: str  # of the credentials refused, salted: tells a changed credential

    @property
    def reason(self) -> str:
        return f"credentials refused by {self.system}"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            first_at=iso(self.first_at), last_at=iso(self.last_at), retry_at=iso(self.retry_at)
        )
        return out

    @classmethod
    def from_json(cls, data: Any) -> Refusal | None:
        """None for anything that is not a stored refusal (no record, an older form)."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                str(data["system"]),
                str(data["message"]),
                parse_timestamp(data["first_at"]),
                parse_timestamp(data["last_at"]),
                int(data["failures"]),
                parse_timestamp(data["retry_at"]),
                str(data["salt"]),
                str(data["fingerprint"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


def backoff(failures: int) -> timedelta:
    """The wait after `failures` refusals in a row (>= 1)."""
    return min(BACKOFF_CAP, BACKOFF_BASE * (2 ** min(max(failures, 1) - 1, 20)))


def fingerprint(secrets: Sequence[str], salt: str) -> str:
    digest = hashlib.sha256(salt.encode())
    for value in secrets:
        digest.update(b"\0" + value.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:16]


def after_refusal(
    previous: Refusal | None, system: str, message: str, now: datetime, secrets: Sequence[str]
) -> Refusal:
    """The record after one more refusal (a new series when the credentials changed)."""
    same = previous is not None and previous.fingerprint == fingerprint(secrets, previous.salt)
    failures = previous.failures + 1 if same and previous is not None else 1
    first = previous.first_at if same and previous is not None else now
    salt = os.urandom(8).hex()
    return Refusal(
        system,
        message[:300],
        first,
        now,
        failures,
        now + backoff(failures),
        salt,
        fingerprint(secrets, salt),
    )


def may_try(refusal: Refusal | None, now: datetime, secrets: Sequence[str]) -> bool:
    """May a cycle contact the remotes now? Yes when nothing was refused, the wait is
    over, or the credentials are not the ones refused."""
    if refusal is None or now >= refusal.retry_at:
        return True
    return refusal.fingerprint != fingerprint(secrets, refusal.salt)


# -- the kv record --------------------------------------------------------------------------


def load(kv: Any) -> Refusal | None:
    """`kv`: a store.StoreKeyValue (or anything with get/set)."""
    return Refusal.from_json(kv.get(KV_KEY))


def save(kv: Any, refusal: Refusal | None) -> None:
    kv.set(KV_KEY, refusal.to_json() if refusal is not None else None)
