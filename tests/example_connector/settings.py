"""Shelfwise's own keys of the `warehouse:` section (the core reads the shared ones)."""

from __future__ import annotations

from dataclasses import dataclass

from loopsync.configkit import Secret, Section

# Pages one listing walk may take: a server that never says "last page" stops here.
MAX_PAGES = 1000
PAGE_SIZE = 100


@dataclass(frozen=True)
class ShelfwiseSettings:
    api_token: Secret
    page_size: int = PAGE_SIZE
    max_pages: int = MAX_PAGES


def parse_settings(section: Section) -> ShelfwiseSettings:
    return ShelfwiseSettings(
        api_token=section.secret("api_token"),
        page_size=section.int("page_size", PAGE_SIZE, min=1, max=500),
        max_pages=section.int("max_pages", MAX_PAGES, min=1),
    )
