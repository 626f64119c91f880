"""One process-wide registry of secret values and one `redact()` used at every exit.

Contract: once a value is registered (`configkit.Secret` registers itself when a
configuration resolves it; connectors register tokens they obtain at run time), no text
that leaves loopsync through a log line, a state-database write, `loopsync status`, a file
loopsync writes or a configuration error shows it. Each exit calls `redact(text)` (or
`redact_obj(value)` for JSON-like data); nothing else decides what is secret.

Besides the plain value, the common encodings a remote or a library may echo are masked:
URL-encoded (`%xx` and `+` for space), JSON-escaped, and base64 at every byte alignment
(so the value is masked inside `base64("user:" + secret)`, as HTTP Basic sends it). Base64
text is only masked where the secret's own bits decide every character, so a fragment
can be a few characters shorter than the full encoding: those edge characters carry at
most 4 bits of the secret.

Values shorter than MIN_LENGTH are not registered: masking "abc" everywhere would shred
ordinary text, and configkit refuses such secrets anyway (issue 14 §2).
"""

from __future__ import annotations

import base64
import functools
import html
import json
import re
import sys
import threading
import traceback
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, quote_plus

__all__ = [
    "MAX_TRANSIENT",
    "MIN_LENGTH",
    "REDACTED",
    "Redactor",
    "clip",
    "contains_secret",
    "dumps_redacted",
    "install_excepthooks",
    "mask_personal",
    "redact",
    "redact_obj",
    "redact_optional",
    "register",
    "registered_count",
    "variants_of",
]

REDACTED = "***"
MIN_LENGTH = 8
# A base64 fragment shorter than this would match too much unrelated text.
_MIN_FRAGMENT = 8

# A long-running `serve` obtains a new access token or session every few minutes; only the
# recent ones can still be valid, and an unbounded list would slow every redaction (each
# adds ~15 needles to every scan).
MAX_TRANSIENT = 8  # access tokens and sessions: only the latest are live


# Every masked form is at least this long (MIN_LENGTH, _MIN_FRAGMENT; an escape only
# lengthens a value): forms are filed under their first _KEY characters.
_KEY = min(MIN_LENGTH, _MIN_FRAGMENT)
# Up to this many forms (a few merchants' secrets), a text is searched for each in turn.
_SCAN_EACH = 64
# A long text is scanned in pieces of this many windows (bounded memory).
_CHUNK = 1 << 16


@functools.lru_cache(maxsize=256)
def _pattern(forms: tuple[str, ...]) -> re.Pattern[str]:
    """The masking pattern of the forms one text holds (usually one secret's few)."""
    # Any letter case: a remote may echo a key upper-cased ("INVALID KEY ABC...").
    return re.compile("|".join(re.escape(v) for v in forms), re.IGNORECASE)


def _base64_fragments(raw: bytes) -> set[str]:
    """The characters of base64(prefix + raw + suffix) that depend only on `raw`, for each
    of the three byte alignments `raw` can start at (standard and URL-safe alphabets)."""
    out: set[str] = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode("ascii")
        first_bit, end_bit = 8 * offset, 8 * (offset + len(raw))
        start = -(-first_bit // 6)  # first 6-bit group wholly inside raw
        stop = end_bit // 6  # one past the last such group
        fragment = encoded[start:stop]
        if len(fragment) >= _MIN_FRAGMENT:
            out.add(fragment)
            out.add(fragment.replace("+", "-").replace("/", "_"))
    return out


def variants_of(value: str) -> set[str]:
    """The forms of `value` that are masked: plain, URL-encoded, JSON-escaped, base64."""
    found = {
        value,
        quote(value, safe=""),
        quote_plus(value, safe=""),
        quote(value),
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
    }
    # Echoes seen in the wild: lower-case %xx, PHP's "\/" in JSON, XML/HTML escapes (a
    # SOAP fault quoting the PeopleVox password as it was sent, `&amp;` and all).
    found |= {re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), v) for v in set(found)}
    found |= {v.replace("/", "\\/") for v in set(found)}
    found |= {
        html.escape(value),
        html.escape(value, quote=False),
        html.escape(value).replace("&#x27;", "&apos;"),
        html.escape(value).replace("&#x27;", "&#39;"),
    }
    found |= _base64_fragments(value.encode("utf-8"))
    return {v for v in found if v}


# The only non-ASCII characters whose lower case holds an ASCII letter: U+0130 (I with a
# dot above, lowered to "i" and a combining dot) and U+212A (the Kelvin sign, to "k"),
# in UTF-8.
_LOWERS_TO_ASCII = ("\u0130".encode(), "\u212a".encode())


class Redactor:
    """A registry of secret values and the masking built from it. The process has one
    (`register`, `redact`, ... below); tests may build their own.

    Cost (a `serve` of 500 merchants registers over a thousand secrets): registering is
    linear in the secret's own forms, never in the secrets so far, and a scan is linear in
    the text, never in the number of secrets. Every masked form is at least `_KEY`
    characters long, so each is filed under its first `_KEY` characters (lower-cased); a
    scan looks up the text's `_KEY`-character windows and tests only the forms filed under
    one it holds. Up to `_SCAN_EACH` forms, testing each with a substring search (in C) is
    cheaper than making the windows, and is done instead. Only the forms a text holds make
    the pattern that masks it (cached), so nothing recompiles one pattern of every secret."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, frozenset[str]] = {}  # configured secrets -> variants
        self._transient: dict[str, frozenset[str]] = {}  # run-time tokens, oldest first
        self._refs: Counter[str] = Counter()  # masked form -> secrets that have it
        # first _KEY lower-cased characters -> ((lower-cased form, form), ...). Changed in
        # place under the lock, one whole tuple at a time: readers only look keys up, so
        # they see a bucket before or after an update, never half of one.
        self._index: dict[str, tuple[tuple[str, str], ...]] = {}
        # every (lower-cased form, form) while there are at most _SCAN_EACH, else None
        self._few: tuple[tuple[str, str], ...] | None = None
        self._non_ascii = 0  # masked forms that are not ASCII (contains_secret_in's bytes path)

    def register(self, value: str | None, *, transient: bool = False) -> None:
        if not isinstance(value, str) or len(value) < MIN_LENGTH:
            return
        with self._lock:
            if value in self._values:
                return
            if transient and value in self._transient:
                # A token in use again is the most recent: other merchants' logins must
                # not evict a token that is still sent (ShipHero's live for 28 days).
                self._transient[value] = self._transient.pop(value)
                return
            variants = frozenset(variants_of(value))
            self._file(variants)
            if transient:
                self._transient[value] = variants
                while len(self._transient) > MAX_TRANSIENT:
                    self._unfile(self._transient.pop(next(iter(self._transient))))
            else:
                gone = self._transient.pop(value, None)
                if gone is not None:
                    self._unfile(gone)
                self._values[value] = variants
            self._few = (
                tuple((form.lower(), form) for form in self._refs)
                if len(self._refs) <= _SCAN_EACH
                else None
            )

    def _file(self, forms: frozenset[str]) -> None:
        for form in forms:
            self._refs[form] += 1
            if self._refs[form] == 1:
                self._non_ascii += not form.isascii()
                low = form.lower()
                key = low[:_KEY]
                self._index[key] = (*self._index.get(key, ()), (low, form))

    def _unfile(self, forms: frozenset[str]) -> None:
        for form in forms:
            self._refs[form] -= 1
            if self._refs[form] > 0:
                continue
            del self._refs[form]
            self._non_ascii -= not form.isascii()
            key = form.lower()[:_KEY]
            rest = tuple(entry for entry in self._index.get(key, ()) if entry[1] != form)
            if rest:
                self._index[key] = rest
            else:
                self._index.pop(key, None)

    def _held(self, low: str) -> Iterator[str]:
        """The masked forms `low` (a lower-cased text) holds, each once."""
        few = self._few
        if few is not None:
            yield from (form for needle, form in few if needle in low)
            return
        index = self._index
        for start in range(0, len(low) - _KEY + 1, _CHUNK):
            part = low[start : start + _CHUNK + _KEY - 1]
            windows = {part[i : i + _KEY] for i in range(len(part) - _KEY + 1)}
            for key in index.keys() & windows:  # a set: C iterates the smaller side
                yield from (form for needle, form in index.get(key, ()) if needle in low)

    def count(self) -> int:
        return len(self._values) + len(self._transient)

    @property
    def active(self) -> bool:
        return bool(self._refs)

    def contains_secret(self, text: str) -> bool:
        if not self._refs:
            return False
        return next(self._held(text.lower()), None) is not None

    def contains_secret_in(self, data: bytes) -> bool:
        """`contains_secret` of UTF-8 bytes (a snapshot), lowered as bytes: three times
        cheaper than as text. The same answer for ASCII, and for any bytes while every
        masked form is ASCII: an ASCII form can only meet a run of ASCII characters, which
        are the same bytes in UTF-8 (an undecodable byte is never ASCII) and lower the
        same, and no other character lowers to ASCII but the two in _LOWERS_TO_ASCII
        (checked against the Unicode tables by a test). A quarter of Loop's snapshots
        hold non-ASCII text (names, reasons): half the cost of decoding them."""
        if not self._refs:
            return False
        if not data.isascii() and (self._non_ascii or any(c in data for c in _LOWERS_TO_ASCII)):
            return self.contains_secret(data.decode("utf-8", "replace"))
        # latin-1 maps every byte to one character, so ASCII runs stay as they are.
        return next(self._held(data.lower().decode("latin-1")), None) is not None

    def redact(self, text: str) -> str:
        if not self._refs or not isinstance(text, str):
            return text
        held = set(self._held(text.lower()))
        if not held:
            return text
        # Longest first, so a value is masked whole, not a shorter variant inside it.
        return _pattern(tuple(sorted(held, key=lambda v: (-len(v), v)))).sub(REDACTED, text)

    def redact_obj(self, value: Any) -> Any:
        if not self._refs:
            return value
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {self.redact_obj(k): self.redact_obj(v) for k, v in value.items()}
        if type(value) in (list, tuple):
            return type(value)(self.redact_obj(v) for v in value)
        return value

    def dumps(self, value: Any) -> str:
        text = json.dumps(value, default=str)
        if not self.contains_secret(text):
            return text
        return self.redact(json.dumps(self.redact_obj(value), default=str))


_default = Redactor()


def register(value: str | None, *, transient: bool = False) -> None:
    """Mask this value (and its encodings) at every exit from now on. `transient`: a token
    obtained at run time (access token, session id); only the latest MAX_TRANSIENT are
    kept, a configured secret stays for the life of the process."""
    _default.register(value, transient=transient)


def registered_count() -> int:
    return _default.count()


def contains_secret_in(data: bytes) -> bool:
    """Whether UTF-8 `data` holds a registered secret (in any known encoding)."""
    return _default.contains_secret_in(data)


def redact(text: str) -> str:
    """`text` with every registered secret (in any known encoding) replaced by ***."""
    return _default.redact(text)


# An email address as remotes echo one in an error text ("customer jane@x.com has no
# order"): local part, @, a dotted domain. Ids, states and counts hold no @.
_EMAIL = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")
PERSONAL = "[email]"


def mask_personal(text: str) -> str:
    """`text` without the email addresses a remote error may have echoed (the status
    page and its JSON show ids, states, reasons and counts, never a customer's email)."""
    return _EMAIL.sub(PERSONAL, text)


def public_obj(value: Any) -> Any:
    """JSON-like data as a person may see it: every string redacted and without emails,
    masked field by field before encoding (masking the encoded text could cut a JSON
    escape such as `\\n` or `\\u00e9` in two). The status page, its JSON and `status`."""
    if isinstance(value, str):
        return mask_personal(redact(value))
    if isinstance(value, dict):
        return {public_obj(k): public_obj(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [public_obj(v) for v in value]
    return value


def redact_obj(value: Any) -> Any:
    """Redact every string inside JSON-like data (dict keys too), keeping its shape."""
    return _default.redact_obj(value)


def contains_secret(text: str) -> bool:
    """True when `text` holds a registered secret in any masked form."""
    return _default.contains_secret(text)


def clip(text: str, limit: int, marker: str = "…") -> str:
    """`text` redacted, then cut to `limit` characters (+ `marker`). In that order: a cut
    through a secret would leave a prefix that no later redaction recognises."""
    text = _default.redact(text)
    return text if len(text) <= limit else text[:limit] + marker


def redact_optional(text: str | None) -> str | None:
    return None if text is None else _default.redact(text)


def dumps_redacted(value: Any) -> str:
    """json.dumps(value, default=str) with secrets masked inside strings, so the text stays
    valid JSON even for a secret holding a quote or a backslash. The common case (nothing
    to mask) costs one substring scan per masked form."""
    return _default.dumps(value)


def install_excepthooks() -> None:
    """Uncaught exceptions (main thread and worker threads) print redacted tracebacks: a
    remote error message that echoes a credential must not reach stderr either."""

    def main_hook(exc_type: Any, exc: Any, tb: Any) -> None:
        sys.stderr.write(redact("".join(traceback.format_exception(exc_type, exc, tb))))

    def thread_hook(args: Any) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "?"
        sys.stderr.write(
            redact(
                f"Exception in thread {name}:\n"
                + "".join(
                    traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)
                )
            )
        )

    sys.excepthook = main_hook
    threading.excepthook = thread_hook
