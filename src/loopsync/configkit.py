"""Typed, path-aware reading of one YAML mapping, shared by the core and every connector.

A `Section` wraps a mapping and knows its key path ("warehouse.statuses"). Each getter
consumes a key; `done()` fails on any key nobody consumed, so a typo is an error, not a
silently ignored setting. Every failure is a ConfigError naming file, key path and problem.

Secrets come from the environment (`${VAR}`) or from a file (`${file:/run/secrets/x}`, a
relative path being relative to the configuration file's folder; one trailing newline at
the end of the file is dropped, as editors and `echo` add it). `${VAR}` with VAR unset is
read from the file named by `VAR_FILE` (Docker's and Kubernetes' convention), the same way.
`NoSecrets` as the environment lints a file without reading any secret. A secret shorter than 8
characters, or with white space at either end, a line break or a control character, is
refused. A resolved secret registers itself with `redaction`, so no exit shows it. A value
expanded from `${VAR}` in an ordinary key is shown in its `${VAR}` form in errors: the
variable may hold something that must not be printed.
"""

from __future__ import annotations

import math
import os
import re
import stat
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from loopsync import redaction
from loopsync.errors import ConfigError
from loopsync.timeutil import parse_duration, parse_timestamp

T = TypeVar("T")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_FILE_REF = re.compile(r"\$\{file:([^}]+)\}")
MIN_SECRET_LENGTH = redaction.MIN_LENGTH  # no real Loop/WMS credential is shorter
_SECRET_FILE_MAX = 64 * 1024
# Nothing loopsync schedules or waits for is longer; anything beyond is a typo.
_DURATION_MAX = timedelta(days=3650)
# No count or rate loopsync reads is anywhere near; beyond, a value is a typo that would
# overflow later (float conversions, timedeltas) instead of failing here.
_NUMBER_MAX = 1_000_000_000
_DURATION_TEXT = re.compile(r"\s*[0-9]+(?:\.[0-9]+)?\s*(?:ms|s|m|h|d|w)\s*")
_MISSING = object()
FILE_SUFFIX = "_FILE"  # ${LOOP_API_KEY} falls back to the file named by LOOP_API_KEY_FILE
_REFERENCE_HELP = (
    "must reference an environment variable, e.g. ${LOOP_API_KEY},"
    " or a file, e.g. ${file:/run/secrets/loop_api_key}"
    " (secrets are never written in the file)"
)


def _via(pointer: str) -> str:
    return f" (named by {pointer})" if pointer else ""


class NoSecrets(Mapping[str, str]):
    """The environment for linting a file without its secrets (`check-config
    --no-secrets`): a secret key must still be a ${VAR} or ${file:PATH} reference, but
    nothing is read; an ordinary `${VAR}` is the real variable, or PLACEHOLDER. Plain
    look-ups (`get`: LOOPSYNC_STATE_DIR, which places the state file) read the real one."""

    PLACEHOLDER = "not-checked-no-secrets"

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env: Mapping[str, str] = os.environ if env is None else env

    def __getitem__(self, name: str) -> str:
        return self.env.get(name) or self.PLACEHOLDER

    def __contains__(self, name: object) -> bool:
        return True

    def get(self, name: str, default: Any = None) -> Any:
        return self.env.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self.env)

    def __len__(self) -> int:
        return len(self.env)


def env_reference(ref: str) -> str | None:
    """The variable a `${VAR}` reference names (None for `${file:...}` or anything else)."""
    m = _ENV_REF.fullmatch(ref.strip())
    return m.group(1) if m else None


class Secret:
    """A value read from the environment (or a secret file). Its repr never shows the
    value, and creating it registers the value for redaction at every exit."""

    __slots__ = ("name", "value")

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self.value = value
        redaction.register(value)

    def __repr__(self) -> str:
        return f"Secret(${{{self.name}}})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)


class Section:
    def __init__(
        self,
        data: Any,
        *,
        file: str,
        path: str = "",
        env: Mapping[str, str] | None = None,
        _expanded: dict[str, str] | None = None,
    ) -> None:
        self.file = file
        self.path = path
        self.env = os.environ if env is None else env
        # expanded text -> its ${VAR} form, shared with sub-sections, for error messages.
        self._expanded: dict[str, str] = {} if _expanded is None else _expanded
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise self.error("", f"must be a mapping, got {_type_name(data)}")
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    # -- plumbing ---------------------------------------------------------------
    def key_path(self, key: str) -> str:
        if not key:
            return self.path
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.file, self.key_path(key), self._unexpand(problem))

    def _unexpand(self, text: str) -> str:
        """`text` with every value this file expanded from ${VAR} put back in ${VAR} form
        (longest first; very short values are left, they would mangle the message)."""
        for value in sorted(self._expanded, key=len, reverse=True):
            if len(value) < 4:
                continue
            for form in (value, repr(value)[1:-1]):  # messages often quote with !r
                if form in text:
                    text = text.replace(form, self._expanded[value])
        return text

    def has(self, key: str) -> bool:
        return key in self.data

    def _take(self, key: str, default: Any) -> Any:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            if default is _MISSING:
                raise self.error(key, "is required")
            return default
        return self.data[key]

    def _expand(self, key: str, value: Any) -> Any:
        """Substitute ${VAR} from the environment; a missing variable is an error."""
        if not isinstance(value, str) or "${" not in value:
            return value

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in self.env:
                raise self.error(key, f"environment variable {name} is not set")
            self._expanded.setdefault(self.env[name], m.group(0))
            return self.env[name]

        expanded = _ENV_REF.sub(sub, value)
        self._expanded.setdefault(expanded, value)
        return expanded

    def done(self) -> None:
        unknown = sorted((str(k) for k in set(self.data) - self.used), key=str)
        if unknown:
            raise self.error(
                unknown[0],
                "unknown key"
                + (f" (also unknown: {', '.join(unknown[1:])})" if len(unknown) > 1 else ""),
            )

    # -- getters ----------------------------------------------------------------
    def section(self, key: str, *, required: bool = False) -> Section:
        raw = self._take(key, _MISSING if required else {})
        if not isinstance(raw, dict):
            raise self.error(key, f"must be a mapping, got {_type_name(raw)}")
        return Section(
            raw, file=self.file, path=self.key_path(key), env=self.env, _expanded=self._expanded
        )

    def url(self, key: str, default: Any = _MISSING) -> Any:
        value = self.str(key, default)
        if value is default and default is not _MISSING:
            return value
        if not re.match(r"^https?://[^/\s]+", value):
            raise self.error(key, f"must be an http(s) URL, got {_show(self.data.get(key))}")
        return value.rstrip("/")

    def secret(self, key: str, default: Any = _MISSING) -> Any:
        """A credential: from ${VAR} or ${file:PATH}, so it never sits in the YAML file."""
        raw = self._take(key, default)
        if raw is default and default is not _MISSING:
            return raw
        if not isinstance(raw, str):
            raise self.error(key, f"must be a string like ${{VAR}}, got {_type_name(raw)}")
        ref = raw.strip()
        if isinstance(self.env, NoSecrets):  # linting: the reference's form only
            if not (_FILE_REF.fullmatch(ref) or _ENV_REF.fullmatch(ref)):
                raise self.error(key, _REFERENCE_HELP)
            return Secret(ref, NoSecrets.PLACEHOLDER)
        if m := _FILE_REF.fullmatch(ref):
            name = f"file:{m.group(1)}"
            value = self._secret_file(key, m.group(1))
            source = f"secret file {m.group(1)}"
        elif m := _ENV_REF.fullmatch(ref):
            name = m.group(1)
            value, source = self._secret_env(key, name)
        else:
            raise self.error(key, _REFERENCE_HELP)
        self._check_secret(key, value, source)
        return Secret(name, value)

    def _secret_env(self, key: str, name: str) -> tuple[str, str]:
        """${NAME}: the variable, else the file named by NAME_FILE (the Docker and
        Kubernetes secrets convention); the variable wins when both are set."""
        if name in self.env:
            return self.env[name], f"environment variable {name}"
        pointer = f"{name}{FILE_SUFFIX}"
        if pointer in self.env:
            path = self.env[pointer]
            if not path.strip():
                raise self.error(
                    key,
                    f"environment variable {pointer} is empty (it should "
                    f"name the file holding {name})",
                )
            return self._secret_file(key, path, via=pointer), f"secret file {path} ({pointer})"
        raise self.error(
            key,
            f"environment variable {name} is not set (nor {pointer}, naming a file that holds it)",
        )

    def _secret_file(self, key: str, name: str, *, via: str = "") -> str:
        # os.path's expanduser leaves "~" as it is where no home is known; Path's raises.
        path = Path(os.path.expanduser(name))  # noqa: PTH111 - see above
        if not path.is_absolute():
            path = Path(self.file).parent / path
        try:
            # Links are followed (mounted secrets are links); a FIFO or a device is not
            # read: it could block the start-up forever or never end. The check is made on
            # what was opened (non-blocking, so opening a FIFO cannot hang either), not on
            # the name: a file swapped between a check and an open is caught too.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise self.error(key, f"secret file {name}{_via(via)} is not a regular file")
            with os.fdopen(fd, "rb") as fh:
                data = fh.read(_SECRET_FILE_MAX + 1)
        except (OSError, ValueError) as exc:
            raise self.error(
                key,
                f"cannot read secret file {name}{_via(via)}: "
                f"{getattr(exc, 'strerror', None) or type(exc).__name__}",
            ) from None
        if len(data) > _SECRET_FILE_MAX:
            raise self.error(key, f"secret file {name} is larger than {_SECRET_FILE_MAX} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(key, f"secret file {name} is not UTF-8 text") from None
        # One final newline is the file convention; any other white space is refused.
        for ending in ("\r\n", "\n"):
            if text.endswith(ending):
                return text[: -len(ending)]
        return text

    def _check_secret(self, key: str, value: str, source: str) -> None:
        """Refuse values that cannot be right or cannot be masked safely; never show them."""
        found = secret_problem(value, source)
        if found is not None:
            raise self.error(key, found)

    def int(
        self, key: str, default: Any = _MISSING, *, min: int | None = None, max: int | None = None
    ) -> Any:
        raw = self._take(key, default)
        if raw is default and default is not _MISSING:
            return raw
        raw = self._expand(key, raw)
        if isinstance(raw, str) and re.fullmatch(r"-?[0-9]{1,30}", raw.strip()):
            raw = int(raw)
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise self.error(key, f"must be an integer, got {_type_name(raw)}")
        if min is not None and raw < min:
            raise self.error(key, f"must be at least {min}, got {_show(raw)}")
        max = _NUMBER_MAX if max is None else max
        if raw > max:
            raise self.error(key, f"must be at most {max}, got {_show(raw)}")
        return raw

    def float(self, key: str, default: Any = _MISSING, *, min: float | None = None) -> Any:
        raw = self._take(key, default)
        if raw is default and default is not _MISSING:
            return raw
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise self.error(key, f"must be a number, got {_type_name(raw)}")
        try:
            value = float(raw)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value) or abs(value) > _NUMBER_MAX:
            raise self.error(key, f"must be a number of at most {_NUMBER_MAX}")
        if min is not None and value < min:
            raise self.error(key, f"must be at least {min}, got {value}")
        return value

    def bool(self, key: str, default: Any = _MISSING) -> Any:
        raw = self._take(key, default)
        if raw is default and default is not _MISSING:
            return raw
        if not isinstance(raw, bool):
            raise self.error(key, f"must be true or false, got {_type_name(raw)}")
        return raw

    def duration(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        min: timedelta | None = None,
        max: timedelta | None = None,
    ) -> Any:
        raw = self._take(key, default)
        if isinstance(raw, timedelta):
            return raw
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            # `every: 90` could mean seconds or minutes: ask, do not guess.
            raise self.error(
                key, f"needs a unit, e.g. {_show(raw)}s or {_show(raw)}m (units: ms, s, m, h, d, w)"
            )
        if not isinstance(raw, str):
            raise self.error(
                key, f"not a duration (use e.g. 30s, 15m, 2h, 7d), got {_type_name(raw)}"
            )
        if not _DURATION_TEXT.fullmatch(raw):
            raise self.error(key, f"not a duration (use e.g. 30s, 15m, 2h, 7d): {_show(raw)}")
        try:
            value = parse_duration(raw)
        except (ValueError, OverflowError):
            value = _DURATION_MAX + timedelta(days=1)
        if value > _DURATION_MAX:
            raise self.error(key, f"is absurdly long: {_show(raw)} (at most {_DURATION_MAX.days}d)")
        if min is not None and value < min:
            raise self.error(key, f"must be at least {min}, got {raw}")
        if max is not None and value > max:
            raise self.error(key, f"must be at most {max}, got {raw}")
        return value

    def timestamp(self, key: str, default: Any = _MISSING) -> Any:
        raw = self._take(key, default)
        if raw is default and default is not _MISSING:
            return raw
        if isinstance(raw, datetime):
            # PyYAML turns unquoted ISO timestamps into datetimes, naive when zoneless
            # and also when the zone was "Z"; re-read the original text to tell them apart.
            if raw.tzinfo is None:
                raise self.error(key, "timestamp needs a timezone, e.g. 2026-01-01T00:00:00Z")
            return parse_timestamp(raw)
        if not isinstance(raw, str):
            raise self.error(key, f"must be a timestamp, got {_type_name(raw)}")
        try:
            return parse_timestamp(self._expand(key, raw))
        except (ValueError, OverflowError) as exc:
            raise self.error(
                key, str(exc) if isinstance(exc, ValueError) else f"{_show(raw)} is out of range"
            ) from None

    def str_list(self, key: str, default: Any = _MISSING) -> Any:
        raw = self._take(key, default)
        if raw is default and default is not _MISSING:
            return raw
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not all(
            isinstance(x, str | int) and not isinstance(x, bool) for x in raw
        ):
            raise self.error(key, "must be a list of strings")
        return [str(x) for x in raw]

    def str_map(
        self, key: str, default: Any = _MISSING, *, value: Callable[[str, Any], T] | None = None
    ) -> Any:
        """A mapping of string keys to strings (or to what `value(key, raw)` makes of it)."""
        raw = self._take(key, default)
        if raw is default and default is not _MISSING:
            return raw
        if not isinstance(raw, dict):
            raise self.error(key, f"must be a mapping, got {_type_name(raw)}")
        out: dict[str, Any] = {}
        for k, v in raw.items():
            sub = f"{key}.{k}"
            if value is not None:
                out[str(k)] = value(sub, v)
                continue
            if isinstance(v, bool) or not isinstance(v, str | int):
                raise self.error(sub, f"must be a string, got {_type_name(v)}")
            out[str(k)] = self._expand(sub, str(v))
        return out

    # Last in the class: below `def str` the name `str` means this method to a type
    # checker, so every other signature comes first.
    def str(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        pattern: str | None = None,
        choices: list[str] | tuple[str, ...] | None = None,
    ) -> Any:
        raw = self._take(key, default)
        if raw is default and default is not _MISSING:
            return raw
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            raw = str(raw)
        if not isinstance(raw, str):
            raise self.error(key, f"must be a string, got {_type_name(raw)}")
        value = self._expand(key, raw)
        if pattern and not re.fullmatch(pattern, value):
            raise self.error(key, f"{_show(raw)} does not match {pattern}")
        if choices is not None and value not in choices:
            raise self.error(key, f"{_show(raw)} is not one of {', '.join(choices)}")
        return value


def _show(value: Any, limit: int = 80) -> str:
    """A value for an error message: its repr, cut short (a config value can be huge)."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        return f"<{_type_name(value)}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing"
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
    }.get(type(value), type(value).__name__)


def secret_problem(value: str, source: str) -> str | None:
    """Why `value` cannot be a credential (it cannot be right or cannot be masked safely),
    naming `source`, never the value; None when it can. Pure: the config's secret check,
    and `webhooks register` before it stores a secret a remote chose."""
    if not value:
        return f"{source} is empty"
    if "\n" in value or "\r" in value:
        return f"{source} contains a line break (a copy-paste mistake?)"
    if value != value.strip():
        return f"{source} has white space at its start or end (a copy-paste mistake?)"
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        return f"{source} contains a control character"
    if any("\ud800" <= ch <= "\udfff" for ch in value):  # undecodable bytes in the env
        return f"{source} is not valid UTF-8 text"
    if any(unicodedata.category(ch) in ("Cf", "Zl", "Zp") for ch in value):
        # a byte-order mark, a zero-width space: invisible, pasted from an editor or a
        # web page, and never part of a real credential
        return (
            f"{source} contains an invisible formatting character"
            " (a byte-order mark, a zero-width space; a copy-paste mistake?)"
        )
    if len(value) < MIN_SECRET_LENGTH:
        return (
            f"{source} is too short ({len(value)} characters; at least "
            f"{MIN_SECRET_LENGTH}): no real credential is, and so short a "
            "value cannot be masked safely"
        )
    return None
