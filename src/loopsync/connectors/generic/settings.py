"""The generic 3PL's `warehouse:` keys: `parse_settings` reads them into `GenericSettings`.

`transport: http` takes `rma_url`, `receipts_url` and their auth; `transport: folder`
takes the four folders (relative to the config file). A key of the other transport is an
error, so a half-converted config fails at start, not at the first poll.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopsync.configkit import Secret, Section
from loopsync.connectors.generic.mapping import CATEGORIES
from loopsync.rules import normalize_status

_HTTP_KEYS = (
    "rma_url",
    "receipts_url",
    "auth_header",
    "auth_token",
    "signing_secret",
    "page_size",
    "max_pages",
)
_FOLDER_KEYS = ("outbox", "inbox", "archive", "rejected")


@dataclass(frozen=True)
class GenericSettings:
    transport: str  # http | folder
    condition_map: dict[str, str]  # normalised 3PL word -> available|damaged|missing
    rma_url: str = ""
    receipts_url: str = ""
    auth_header: str = "X-Api-Key"
    auth_token: Secret | None = None
    signing_secret: Secret | None = None
    page_size: int = 100
    max_pages: int = 10_000  # pages one receipts read may take
    outbox: Path = Path()
    inbox: Path = Path()
    archive: Path = Path()
    rejected: Path = Path()


def parse_settings(section: Section) -> GenericSettings:
    transport = section.str("transport", choices=("http", "folder"))
    other, other_name = (_FOLDER_KEYS, "folder") if transport == "http" else (_HTTP_KEYS, "http")
    for key in other:
        if section.has(key):
            raise section.error(key, f"applies only to transport: {other_name}")
    condition_map = _parse_condition_map(section)
    if transport == "http":
        return GenericSettings(
            transport=transport,
            condition_map=condition_map,
            rma_url=section.url("rma_url"),
            receipts_url=section.url("receipts_url"),
            auth_header=section.str("auth_header", "X-Api-Key", pattern=r"[A-Za-z0-9-]+"),
            auth_token=section.secret("auth_token", None),
            signing_secret=section.secret("signing_secret", None),
            page_size=section.int("page_size", 100, min=1, max=1000),
            max_pages=section.int("max_pages", 10_000, min=1),
        )
    inbox = _existing_folder(section, "inbox")
    return GenericSettings(
        transport=transport,
        condition_map=condition_map,
        outbox=_existing_folder(section, "outbox"),
        inbox=inbox,
        archive=_folder(section, "archive", inbox.parent / "archive"),
        rejected=_folder(section, "rejected", inbox.parent / "rejected"),
    )


def _parse_condition_map(section: Section) -> dict[str, str]:
    def category(key: str, value: Any) -> str:
        if value not in CATEGORIES:
            raise section.error(key, f"{value!r} is not one of {', '.join(CATEGORIES)}")
        return str(value)

    merchant = section.str_map("condition_map", {}, value=category)
    return {
        **{c: c for c in CATEGORIES},
        **{normalize_status(word): cat for word, cat in merchant.items()},
    }


def _folder(section: Section, key: str, default: Path) -> Path:
    raw = section.str(key, None)
    if raw is None:
        return default
    path = Path(raw).expanduser()
    # Relative folders are relative to the config file, not to wherever loopsync runs.
    path = path if path.is_absolute() else Path(section.file).parent / path
    if path.is_symlink():  # refused at run time too: say so now, with the fix
        raise section.error(
            key,
            f"folder {path} is a symbolic link; give its real path "
            f"{Path(os.path.realpath(path))} (loopsync never follows a "
            "link in the shared folders)",
        )
    return path


def _existing_folder(section: Section, key: str) -> Path:
    if not section.has(key):
        raise section.error(key, "is required for transport: folder")
    path = _folder(section, key, Path())
    if not path.is_dir():
        raise section.error(key, f"folder {path} does not exist")
    return path
