"""Pure decisions: which returns go to the warehouse, what a warehouse status means for
Loop, and the text of the notes loopsync leaves. No I/O."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any

from loopsync.loop_facts import NOTE_MAX_CHARS
from loopsync.models import LoopReturn, RmaStatus
from loopsync.timeutil import parse_timestamp

# The rules vocabulary: the merchant's reading of warehouse words. It lives here, in the
# core, so that the core never imports from the connector layer (connectors import it).


def normalize_status(word: str | None) -> str:
    """Statuses compare ignoring case, with '_' and '-' equal to ' '."""
    if not word:
        return ""
    return " ".join(str(word).replace("_", " ").replace("-", " ").lower().split())


@dataclass(frozen=True)
class StatusRules:
    """The merchant's reading of warehouse status words (all normalised)."""

    process: frozenset[str]
    flag: frozenset[str]
    ignore: frozenset[str]
    report: frozenset[str] = frozenset()  # no Loop call; shown to a person
    flag_conditions: frozenset[str] = frozenset()  # item conditions that force a flag
    require_full_receipt: bool = True  # process only when every unit arrived

    @classmethod
    def build(
        cls,
        process: Sequence[str],
        flag: Sequence[str],
        ignore: Sequence[str],
        report: Sequence[str] = (),
        flag_conditions: Sequence[str] = (),
        require_full_receipt: bool = True,
    ) -> StatusRules:
        def n(xs: Sequence[str]) -> frozenset[str]:
            return frozenset(normalize_status(x) for x in xs)

        return cls(
            n(process), n(flag), n(ignore), n(report), n(flag_conditions), require_full_receipt
        )


@dataclass(frozen=True)
class GradingRules:
    """Warehouse condition/disposition words -> Loop grade and assess values."""

    conditions: dict[str, str] = field(default_factory=dict)  # -> condition_category
    dispositions: dict[str, str] = field(default_factory=dict)  # -> disposition_outcome
    processor: str | None = None  # return_processor email

    @property
    def enabled(self) -> bool:
        return bool(self.conditions or self.dispositions)


NOTE_LIMIT = NOTE_MAX_CHARS  # Loop's note length limit (loop_facts)

PROCESS, FLAG, IGNORE, REPORT, WAIT = "process", "flag", "ignore", "report", "wait"


@dataclass(frozen=True)
class PushPlan:
    destination: str | None  # mapped warehouse id; None with a skip reason
    skip_reason: str | None = None

    @property
    def push(self) -> bool:
        return self.skip_reason is None


def plan_push(
    ret: LoopReturn, destinations: dict[str, str], *, needs_destination: bool = True
) -> PushPlan:
    """Open returns with a mapped destination and at least one SKU go to the warehouse;
    every other return is recorded with the reason it does not."""
    if ret.state != "open":
        return PushPlan(None, f"return is {ret.state}, not open")
    if not any(li.sku for li in ret.line_items):
        return PushPlan(None, "return has no line item with a SKU")
    if not needs_destination:
        return PushPlan(destinations.get(ret.destination_id or "", ""))
    if ret.destination_id is None:
        return PushPlan(None, "return has no destination")
    mapped = destinations.get(ret.destination_id)
    if not mapped:
        return PushPlan(
            None, f"destination {ret.destination_id} is not mapped in warehouse.destinations"
        )
    return PushPlan(mapped)


@dataclass(frozen=True)
class Decision:
    action: str  # process | flag | ignore | report | wait
    reason: str

    @property
    def final(self) -> bool:
        """Does this decision end polling for the return?"""
        return self.action in (PROCESS, FLAG, REPORT)


def decide(status: RmaStatus, rules: StatusRules) -> Decision:
    """What the merchant's rules make of a warehouse status.

    A status in `process` is processed only when every expected unit arrived in a
    condition not listed in `flag_conditions`; otherwise it is flagged (Loop's own
    ShipHero integration behaves this way).
    """
    word = normalize_status(status.status)
    shown = status.status or "(none)"
    if word in rules.report:
        return Decision(REPORT, f"warehouse status '{shown}': left for a person")
    if word in rules.flag:
        return Decision(FLAG, f"warehouse status '{shown}'")
    if word in rules.ignore:
        return Decision(IGNORE, f"warehouse status '{shown}'")
    if word not in rules.process:
        return Decision(WAIT, f"warehouse status '{shown}' is in no status list")
    problems = condition_problems(status, rules)
    if rules.require_full_receipt:
        problems += quantity_problems(status)
    if problems:
        return Decision(FLAG, f"warehouse status '{shown}': " + "; ".join(problems))
    return Decision(
        PROCESS, f"warehouse status '{shown}', every unit received ({status.received_units})"
    )


def condition_problems(status: RmaStatus, rules: StatusRules) -> list[str]:
    out = []
    for item in status.items:
        cond = normalize_status(item.condition)
        if cond and cond in rules.flag_conditions:
            out.append(f"{item.sku} {item.condition}")
    return out


def quantity_problems(status: RmaStatus) -> list[str]:
    out = []
    for item in status.items:
        if item.received < item.expected:
            out.append(f"{item.sku} short {item.received}/{item.expected}")
        elif item.received > item.expected:
            out.append(f"{item.sku} over {item.received}/{item.expected}")
    if not out and status.received_units != status.expected_units:
        word = "short" if status.received_units < status.expected_units else "over"
        out.append(f"{word} {status.received_units}/{status.expected_units} units")
    return out


def flag_note(status: RmaStatus, decision: Decision) -> str:
    """Why loopsync flagged: status, units expected and received, conditions."""
    conds = sorted({f"{i.sku}: {i.condition}" for i in status.items if i.condition})
    text = (
        f"loopsync flagged: {decision.reason}. Units expected {status.expected_units}, "
        f"received {status.received_units}."
    )
    if conds:
        text += " Conditions: " + ", ".join(conds) + "."
    return clip(text)


def rma_note(label: str) -> str:
    return clip(f"loopsync: created {label} in the warehouse.")


def link_note(label: str) -> str:
    """The note a watch-only connector leaves when it matches the return (names the ASN)."""
    return clip(f"loopsync: matched this return to {label} in the warehouse.")


def note_present(notes: Sequence[str], text: str, names: str | None = None) -> bool:
    """Is the note already in Loop: the same text (white space folded), or, with `names`,
    a loopsync note naming the same RMA (an earlier wording, or a clipped copy)?"""
    if text and text in notes:
        return True
    return bool(names) and any(names in n and "loopsync" in n.lower() for n in notes)


def ambiguous_reason(kind: str, key: str, others: Sequence[str]) -> str:
    return clip(
        f"ambiguous {kind} match: {key} also matches Loop return(s) "
        f"{', '.join(sorted(others))}; loopsync acts on none of them (match by the "
        "Loop return id, or settle them by hand)",
        500,
    )


# -- settling a process or flag whose answer was lost -------------------------------------

DONE, REPEAT, REPORT_ACTION, WAIT_READ = "done", "repeat", "report", "wait"


@dataclass(frozen=True)
class ActionRead:
    """What one read of Loop showed about a return after a lost process/flag answer."""

    state: str  # the return's state, lower case
    updated_at: str  # Loop's updated_at, as sent
    notes: int  # how many notes the return had
    at: str  # when we read it (ISO UTC, our clock)
    loop_at: str = ""  # Loop's clock at the read (its `Date`), when it sent one


def settle_action(
    kind: str, first: ActionRead | None, read: ActionRead, *, attempted_at: str
) -> str:
    """done | wait | repeat | report for a process/flag whose outcome is unknown.

    Any state but `open` means the call (or a person) got there: done. An `open` read may
    be stale, so the first one is only kept (wait). Repeating needs positive evidence that
    the call did not land: a second `open` read, a settle delay after the first, agreeing
    with it (same updated_at, same number of notes) and showing no change since the
    attempt. Anything else is reported for a person rather than risking a second call.
    """
    if read.state != "open":
        return DONE
    if first is None:
        return WAIT_READ
    if first.state != "open" or first.updated_at != read.updated_at or first.notes != read.notes:
        return REPORT_ACTION
    try:
        changed = parse_timestamp(read.updated_at, assume_utc=True) > parse_timestamp(
            attempted_at, assume_utc=True
        )
    except (ValueError, OverflowError):
        return REPORT_ACTION
    return REPORT_ACTION if changed else REPEAT


def clip(text: str, limit: int = NOTE_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def grading_items(
    ret: LoopReturn, status: RmaStatus, grading: GradingRules
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Loop grade and assess items for the units the warehouse graded.

    Loop lists one line item per unit; a warehouse reports per SKU. Each SKU's condition
    goes to as many of that SKU's Loop line items as units were received.
    """
    if not grading.enabled:
        return [], []
    lines_by_sku: dict[str, list[str]] = defaultdict(list)
    for li in ret.line_items:
        if li.sku:
            lines_by_sku[li.sku].append(li.line_item_id)
    grades: list[dict[str, Any]] = []
    assessments: list[dict[str, Any]] = []
    for item in status.items:
        ids = lines_by_sku.get(item.sku, [])[: max(item.received, 0)]
        category = grading.conditions.get(normalize_status(item.condition))
        outcome = grading.dispositions.get(
            normalize_status(item.disposition)
        ) or grading.dispositions.get(normalize_status(item.condition))
        for lid in ids:
            base: dict[str, Any] = {"line_item_id": _int_or_str(lid)}
            if grading.processor:
                base["return_processor"] = grading.processor
            if category:
                grades.append(
                    {
                        **base,
                        "condition_category": category,
                        "description": clip(f"{item.sku}: {item.condition}", 255),
                    }
                )
            if outcome:
                assessments.append({**base, "disposition_outcome": outcome})
    return grades, assessments


def _int_or_str(value: str) -> int | str:
    return int(value) if value.isascii() and value.isdigit() else value  # int("²") fails
