"""The toy kind's `warehouse:` keys."""

from __future__ import annotations

from dataclasses import dataclass

from loopsync.configkit import Section


@dataclass(frozen=True)
class ToySettings:
    bin_code: str


def parse_settings(section: Section) -> ToySettings:
    return ToySettings(bin_code=section.str("bin_code", "RETURNS"))
