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
import json
import re
import sys
import threading
import traceback
from typing import Any
from urllib.parse import quote, quote_plus

__all__ = ["MIN_LENGTH", "REDACTED", "dumps_redacted", "redact", "redact_obj", "redact_optional",
           "install_excepthooks", "register", "registered_count"]

REDACTED = "***"
MIN_LENGTH = 8
# A base64 fragment shorter than this would match too much unrelated text.
_MIN_FRAGMENT = 8

_lock = threading.Lock()
_values: dict[str, frozenset[str]] = {}      # configured secrets -> their variants
_transient: dict[str, frozenset[str]] = {}   # tokens obtained at run time, oldest first
# A long-running `serve` obtains a new access token or session every few minutes; only the
# recent ones can still be valid, and an unbounded list would slow every redaction.
MAX_TRANSIENT = 64
_pattern: re.Pattern[str] | None = None
# The same variants as a tuple for the fast path: substring tests run in C, ~20x faster
# than the regex alternation over a clean 3 KB snapshot (the common case on ingest).
_needles: tuple[str, ...] = ()


def _base64_fragments(raw: bytes) -> set[str]:
    """The characters of base64(prefix + raw + suffix) that depend only on `raw`, for each
    of the three byte alignments `raw` can start at (standard and URL-safe alphabets)."""
    out: set[str] = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode("ascii")
        first_bit, end_bit = 8 * offset, 8 * (offset + len(raw))
        start = -(-first_bit // 6)          # first 6-bit group wholly inside raw
        stop = end_bit // 6                 # one past the last such group
        fragment = encoded[start:stop]
        if len(fragment) >= _MIN_FRAGMENT:
            out.add(fragment)
            out.add(fragment.replace("+", "-").replace("/", "_"))
    return out


def _variants_of(value: str) -> set[str]:
    found = {value, quote(value, safe=""), quote_plus(value, safe=""), quote(value),
             json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    found |= _base64_fragments(value.encode("utf-8"))
    return {v for v in found if v}


def register(value: str | None, *, transient: bool = False) -> None:
    """Mask this value (and its encodings) at every exit from now on. `transient`: a token
    obtained at run time (access token, session id); only the latest MAX_TRANSIENT are
    kept, a configured secret stays for the life of the process."""
    if not isinstance(value, str) or len(value) < MIN_LENGTH:
        return
    with _lock:
        if value in _values or (transient and value in _transient):
            return
        variants = frozenset(_variants_of(value))
        if transient:
            _transient[value] = variants
            while len(_transient) > MAX_TRANSIENT:
                del _transient[next(iter(_transient))]
        else:
            _transient.pop(value, None)
            _values[value] = variants
        _rebuild()


def _rebuild() -> None:
    global _pattern, _needles
    every: set[str] = set()
    for group in (*_values.values(), *_transient.values()):
        every |= group
    # Longest first, so a value is masked whole, not a shorter variant inside it.
    ordered = sorted(every, key=lambda v: (-len(v), v))
    _needles = tuple(ordered)
    _pattern = re.compile("|".join(re.escape(v) for v in ordered)) if ordered else None


def registered_count() -> int:
    return len(_values) + len(_transient)


def redact(text: str) -> str:
    """`text` with every registered secret (in any known encoding) replaced by ***."""
    pattern = _pattern
    if pattern is None or not isinstance(text, str) or not _contains_any(text):
        return text
    return pattern.sub(REDACTED, text)


def _contains_any(text: str) -> bool:
    return any(needle in text for needle in _needles)


def redact_obj(value: Any) -> Any:
    """Redact every string inside JSON-like data (dict keys too), keeping its shape."""
    if _pattern is None:
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_obj(k): redact_obj(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(redact_obj(v) for v in value)
    return value


def redact_optional(text: str | None) -> str | None:
    return None if text is None else redact(text)


def dumps_redacted(value: Any) -> str:
    """json.dumps(value, default=str) with secrets masked inside strings, so the text stays
    valid JSON even for a secret holding a quote or a backslash. The common case (nothing
    to mask) costs one regex scan of the dumped text."""
    text = json.dumps(value, default=str)
    if _pattern is None or not _contains_any(text):
        return text
    return redact(json.dumps(redact_obj(value), default=str))


def install_excepthooks() -> None:
    """Uncaught exceptions (main thread and worker threads) print redacted tracebacks: a
    remote error message that echoes a credential must not reach stderr either."""
    def main_hook(exc_type: Any, exc: Any, tb: Any) -> None:
        sys.stderr.write(redact("".join(traceback.format_exception(exc_type, exc, tb))))

    def thread_hook(args: Any) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "?"
        sys.stderr.write(redact(f"Exception in thread {name}:\n" + "".join(
            traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))))

    sys.excepthook = main_hook
    threading.excepthook = thread_hook
