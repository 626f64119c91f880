"""Loop Returns facts the code depends on, each defined once (docs/api/loop.md).

A module of its own, with no imports of loopsync, because pure modules (`rules`,
`windows`, `config`) need these values and must not import the HTTP client
(`loop_client`) to get them. The sandbox's emulated Loop keeps its own copy on purpose: a
fake that reads the protocol independently catches what a shared constant would hide.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum


class LoopState(StrEnum):
    """A Loop return's `state`. Loop's list hides `cancelled` and `review` unless asked,
    so ingest asks for each state by name."""

    OPEN = "open"
    CLOSED = "closed"
    CANCELLED = "cancelled"
    REVIEW = "review"
    EXPIRED = "expired"


# The default ingest order (`loop.states` in the config); plain strings for YAML and SQL.
LOOP_STATES: tuple[str, ...] = tuple(state.value for state in LoopState)
# The Detailed Returns List filters on one of these.
LIST_FILTERS: tuple[str, ...] = ("created_at", "updated_at")
# The list answers 422 for a window longer than this (exactly 120 days is allowed); the
# ASN report's cap is UNCONFIRMED, so it stays inside the same one.
MAX_WINDOW = timedelta(days=120)
MAX_PAGE_SIZE = 750  # current docs; older snapshots said 500/700
NOTE_MAX_CHARS = 254  # note content "must be less than 255 characters"
DISPOSITION_BATCH = 20  # items per grade/assess call: the grading guide says 20 (OpenAPI 30)
# Grading vocabulary (`condition_category`, `disposition_outcome`).
LOOP_GRADES: tuple[str, ...] = (
    "grade_a",
    "grade_b",
    "grade_c",
    "grade_d",
    "incorrect_item",
    "missing",
    "junk",
)
LOOP_DISPOSITIONS: tuple[str, ...] = (
    "back_to_stock",
    "resale_hold",
    "recycle",
    "donate",
    "missing",
)
# Error codes of an action refused because of the return's state (HTTP 200 with an error).
STATE_CONFLICT_CODES = frozenset({"UNPROCESSABLE_RETURN", "UNPROCESSABLE_FLAGGED_RETURN"})
