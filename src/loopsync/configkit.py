"""Typed, path-aware reading of one YAML mapping, shared by the core and every connector.

A `Section` wraps a mapping and knows its key path ("warehouse.statuses"). Each getter
consumes a key; `done()` fails on any key nobody consumed, so a typo is an error, not a
silently ignored setting. Every failure is a ConfigError naming file, key path and problem.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar

from loopsync.errors import ConfigError
from loopsync.timeutil import parse_duration, parse_timestamp

T = TypeVar("T")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MISSING = object()


class Secret:
    """A value read from the environment. Its repr never shows the value."""

    __slots__ = ("name", "value")

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self.value = value

    def __repr__(self) -> str:
        return f"Secret(${{{self.name}}})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)


class Section:
    def __init__(self, data: Any, *, file: str, path: str = "",
                 env: Mapping[str, str] | None = None) -> None:
        self.file = file
        self.path = path
        self.env = os.environ if env is None else env
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
        return ConfigError(self.file, self.key_path(key), problem)

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
            return self.env[name]

        return _ENV_REF.sub(sub, value)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.error(unknown[0], "unknown key" + (
                f" (also unknown: {', '.join(unknown[1:])})" if len(unknown) > 1 else ""))

    # -- getters ----------------------------------------------------------------
    def section(self, key: str, *, required: bool = False) -> Section:
        raw = self._take(key, _MISSING if required else {})
        if not isinstance(raw, dict):
            raise self.error(key, f"must be a mapping, got {_type_name(raw)}")
        return Section(raw, file=self.file, path=self.key_path(key), env=self.env)

    def str(self, key: str, default: Any = _MISSING, *, pattern: str | None = None,
            choices: list[str] | tuple[str, ...] | None = None) -> Any:
        raw = self._take(key, default)
        if raw is default and default is not _MISSING:
            return raw
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            raw = str(raw)
        if not isinstance(raw, str):
            raise self.error(key, f"must be a string, got {_type_name(raw)}")
        value = self._expand(key, raw)
        if pattern and not re.fullmatch(pattern, value):
            raise self.error(key, f"{value!r} does not match {pattern}")
        if choices is not None and value not in choices:
            raise self.error(key, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def url(self, key: str, default: Any = _MISSING) -> Any:
        value = self.str(key, default)
        if value is default and default is not _MISSING:
            return value
        if not re.match(r"^https?://[^/\s]+", value):
            raise self.error(key, f"must be an http(s) URL, got {value!r}")
        return value.rstrip("/")

    def secret(self, key: str, default: Any = _MISSING) -> Any:
        """A credential: must come from ${VAR} so it never sits in the YAML file."""
        raw = self._take(key, default)
        if raw is default and default is not _MISSING:
            return raw
        if not isinstance(raw, str):
            raise self.error(key, f"must be a string like ${{VAR}}, got {_type_name(raw)}")
        m = _ENV_REF.fullmatch(raw.strip())
        if not m:
            raise self.error(key, "must reference an environment variable, e.g. ${LOOP_API_KEY}"
                             " (secrets are never written in the file)")
        name = m.group(1)
        value = self.env.get(name)
        if not value:
            raise self.error(key, f"environment variable {name} is not set")
        return Secret(name, value)

    def int(self, key: str, default: Any = _MISSING, *, min: int | None = None,
            max: int | None = None) -> Any:
        raw = self._take(key, default)
        if raw is default and default is not _MISSING:
            return raw
        raw = self._expand(key, raw)
        if isinstance(raw, str) and re.fullmatch(r"-?\d+", raw.strip()):
            raw = int(raw)
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise self.error(key, f"must be an integer, got {_type_name(raw)}")
        if min is not None and raw < min:
            raise self.error(key, f"must be at least {min}, got {raw}")
        if max is not None and raw > max:
            raise self.error(key, f"must be at most {max}, got {raw}")
        return raw

    def float(self, key: str, default: Any = _MISSING, *, min: float | None = None) -> Any:
        raw = self._take(key, default)
        if raw is default and default is not _MISSING:
            return raw
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise self.error(key, f"must be a number, got {_type_name(raw)}")
        if min is not None and raw < min:
            raise self.error(key, f"must be at least {min}, got {raw}")
        return float(raw)

    def bool(self, key: str, default: Any = _MISSING) -> Any:
        raw = self._take(key, default)
        if raw is default and default is not _MISSING:
            return raw
        if not isinstance(raw, bool):
            raise self.error(key, f"must be true or false, got {_type_name(raw)}")
        return raw

    def duration(self, key: str, default: Any = _MISSING, *,
                 min: timedelta | None = None, max: timedelta | None = None) -> Any:
        raw = self._take(key, default)
        if isinstance(raw, timedelta):
            return raw
        try:
            value = parse_duration(raw)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None
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
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def str_list(self, key: str, default: Any = _MISSING) -> Any:
        raw = self._take(key, default)
        if raw is default and default is not _MISSING:
            return raw
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not all(isinstance(x, str | int) and not isinstance(x, bool)
                                                for x in raw):
            raise self.error(key, "must be a list of strings")
        return [str(x) for x in raw]

    def str_map(self, key: str, default: Any = _MISSING, *,
                value: Callable[[str, Any], T] | None = None) -> Any:
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


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)
