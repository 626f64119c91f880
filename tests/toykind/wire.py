"""The toy kind's remote: an in-memory dict of RMAs by number (no HTTP)."""

from __future__ import annotations

from typing import Any


class ToyWire:
    def __init__(self) -> None:
        self.rmas: dict[str, dict[str, Any]] = {}
