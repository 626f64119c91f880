"""Issue 11 (ingest at the speed of the wire): `jsonio` gives the standard library's
answers with orjson's speed, the ingest's one orjson pass still refuses what `check_tree`
refuses, and a hash stored before orjson does not make an unchanged return look changed."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopsync import jsonio
from loopsync.errors import Unreadable
from loopsync.models import MAX_DEPTH, check_tree, checked_json
from loopsync.state import Stage, Store
from loopsync.state.returns import encode_snapshot, legacy_hash
from loopsync.testing import FakeClock

SRC = Path(__file__).resolve().parent.parent / "src" / "loopsync"
WHEN = datetime(2026, 6, 1, tzinfo=UTC)

# JSON values with the awkward parts: ints of any size, lone surrogates, any text.
_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=20,
)


def _stdlib(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


@settings(max_examples=120, deadline=None)
@given(_values)
def test_loads_gives_what_the_standard_library_gives(value: Any) -> None:
    text = json.dumps(value)  # ASCII escapes: a lone surrogate travels as a \ud800-style escape
    try:
        expected: Any = json.loads(text)
    except ValueError:
        return
    got = jsonio.loads(text)
    assert got == expected and _stdlib(got) == _stdlib(expected)  # an int stays an int
    assert jsonio.loads(text.encode()) == expected


@settings(max_examples=120, deadline=None)
@given(_values)
def test_dumps_round_trips_or_refuses_what_is_not_text(value: Any) -> None:
    try:
        data = jsonio.dumps(value)
    except (TypeError, ValueError):
        # Only a lone surrogate (not encodable as UTF-8) may be refused.
        with pytest.raises(UnicodeEncodeError):
            _stdlib(value).encode("utf-8")
        return
    assert json.loads(data) == json.loads(_stdlib(value))


@given(st.integers(min_value=2**63, max_value=2**400) | st.integers(max_value=-(2**63) - 1))
def test_an_integer_beyond_64_bits_keeps_every_digit_both_ways(big: int) -> None:
    text = json.dumps({"id": big, "list": [1, big]})
    assert jsonio.loads(text) == {"id": big, "list": [1, big]}
    assert type(jsonio.loads(text)["id"]) is int  # orjson alone would make it a float
    assert json.loads(jsonio.dumps([big])) == [big]


@given(st.text(alphabet="0123456789", min_size=19, max_size=40))
def test_a_long_digit_run_inside_a_string_is_still_a_string(digits: str) -> None:
    text = json.dumps({"tracking_number": digits, "n": 5})
    assert jsonio.loads(text) == {"tracking_number": digits, "n": 5}


@pytest.mark.parametrize(
    ("text", "long"),
    [
        ("[1234567890123456789]", True),
        ('{"a": -1234567890123456789}', True),
        ("1234567890123456789", True),
        ('{"a":\n\t 12345678901234567890}', True),
        ('"1234567890123456789"', False),
        ('["x12345678901234567890"]', False),
        ("[123456789012345678]", False),
    ],
)
def test_the_long_integer_scan_finds_number_tokens_only(text: str, long: bool) -> None:
    assert jsonio.may_hold_long_int(text) is long
    assert jsonio.may_hold_long_int(text.encode()) is long


@pytest.mark.parametrize("text", ['["\\ud800"]', '{"a": "x\\udfff"}', "[NaN]", "[1e400]"])
def test_text_orjson_refuses_is_decoded_as_the_standard_library_decodes_it(text: str) -> None:
    got, expected = jsonio.loads(text), json.loads(text)
    assert repr(got) == repr(expected)


def test_what_is_not_json_is_refused_as_the_standard_library_refuses_it() -> None:
    with pytest.raises(ValueError):
        jsonio.loads("{not json")
    with pytest.raises(ValueError):
        jsonio.dumps(["\ud800"])
    with pytest.raises(TypeError):
        jsonio.dumps({1, 2})
    with pytest.raises(TypeError):
        jsonio.dumps([datetime(2026, 1, 1)])  # no silent str(): the snapshot is data


def test_nan_is_written_as_null_which_is_json() -> None:
    assert json.loads(jsonio.dumps([math.nan, math.inf])) == [None, None]


# -- the ingest's one pass: check and snapshot -------------------------------------------


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


@pytest.mark.parametrize(
    "bad",
    [
        {"id": "1", "title": "a\ud800b"},
        {"id": "1", "x\udc00": 1},
        {"id": "1", "n": 1 << 1100},
        {"id": "1", "deep": _nested(MAX_DEPTH + 2)},
        {"id": "1", "when": datetime(2026, 1, 1)},
        {"id": "1", 5: "a key that is not text"},
    ],
)
def test_the_fast_check_refuses_what_check_tree_refuses_with_its_reason(bad: Any) -> None:
    with pytest.raises(Unreadable) as slow:
        check_tree(bad, "in the object")
    with pytest.raises(Unreadable) as fast:
        checked_json(bad, "in the object")
    assert str(fast.value) == str(slow.value)


@settings(max_examples=120, deadline=None)
@given(_values)
def test_the_fast_check_agrees_with_check_tree_on_any_decoded_value(value: Any) -> None:
    value = {"id": "1", "v": value}  # a return is an object
    try:
        check_tree(value, "x")
    except Unreadable:
        with pytest.raises(Unreadable):
            checked_json(value, "x")
        return
    assert json.loads(checked_json(value, "x")) == json.loads(_stdlib(value))


def test_a_many_container_return_within_the_depth_limit_is_accepted() -> None:
    value = {"line_items": [{"a": {"b": [1]}} for _ in range(100)]}
    assert json.loads(checked_json(value, "x")) == value


# -- stored hashes -------------------------------------------------------------------------


def _upsert(store: Store, raw: dict[str, Any], updated: datetime = WHEN) -> Any:
    return store.returns.upsert(
        raw["id"],
        raw,
        state="closed",
        updated_at=updated,
        created_at=WHEN,
        destination_id="d",
        order_name="#1",
    )


def test_a_return_stored_with_the_old_hash_is_unchanged_when_read_again(tmp_path: Path) -> None:
    """Before orjson the hash was of the standard library's ASCII dump: reading the same
    return again must not count it changed (a skipped return would go back to new)."""
    store = Store(tmp_path / "s.sqlite", FakeClock("2026-06-01T00:00:00Z"))
    raw = {"id": "1001", "customer": "Zoë Ünal", "total": 1e16, "items": [{"t": "ß"}]}
    _upsert(store, raw)
    store.returns.move("1001", Stage.SKIPPED, "closed in Loop")
    store.db.execute("update returns set hash = ? where id = '1001'", [legacy_hash(raw)])
    assert legacy_hash(raw) != encode_snapshot(raw)[1]  # the format did change

    assert _upsert(store, dict(raw)) is None  # unchanged: not NEW, not CHANGED
    row = store.returns.get("1001")
    assert row is not None and row.stage == Stage.SKIPPED and row.reason == "closed in Loop"
    assert row.hash == encode_snapshot(raw)[1]  # moved to the new hash once

    assert _upsert(store, {**raw, "customer": "Zoë"}, WHEN.replace(hour=1)) is not None
    assert store.returns.get("1001").stage == Stage.NEW  # type: ignore[union-attr]


def test_a_snapshot_is_stored_as_the_json_it_was_checked_as(tmp_path: Path) -> None:
    raw = {"id": "7", "title": "Café", "n": 2**70}
    text, h = encode_snapshot(raw, checked_json(raw, "x"))
    assert json.loads(text) == raw and (text, h) == encode_snapshot(raw)


def test_orjson_is_imported_by_jsonio_alone() -> None:
    importers = [
        path.relative_to(SRC).as_posix()
        for path in SRC.rglob("*.py")
        if re.search(r"^\s*(import|from)\s+orjson\b", path.read_text("utf-8"), re.MULTILINE)
    ]
    assert importers == ["jsonio.py"]
