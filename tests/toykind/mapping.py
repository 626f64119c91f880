"""Pure: a toy RMA record -> RmaStatus (Unreadable naming the field otherwise)."""

from __future__ import annotations

from typing import Any

from loopsync.errors import Unreadable
from loopsync.models import RmaRef, RmaStatus, identifier, whole_number


def status(ref: RmaRef, record: Any) -> RmaStatus:
    if not isinstance(record, dict):
        raise Unreadable("toy RMA is not an object")
    word = identifier(record.get("status"), "status")
    if not word:
        raise Unreadable("toy RMA has no status", field="status")
    expected = whole_number(record.get("expected", 0), "expected")
    received = whole_number(record.get("received", 0), "received")
    return RmaStatus(return_id=ref.return_id, rma_id=ref.rma_id, status=word,
                     expected_units=expected, received_units=received)
