"""Each Loop fact is defined once (`loop_facts`) and one quantity parser reads every count."""

import pytest

from loopsync import config, loop_client, loop_facts, rules, windows
from loopsync.errors import Unreadable
from loopsync.models import whole_number


def test_every_module_reads_loops_facts_from_the_one_home():
    assert loop_client.LOOP_STATES is config.LOOP_STATES is loop_facts.LOOP_STATES
    assert loop_client.MAX_WINDOW is config.MAX_WINDOW is windows.MAX_SPAN is loop_facts.MAX_WINDOW
    assert loop_client.DISPOSITION_BATCH is loop_facts.DISPOSITION_BATCH
    assert rules.NOTE_LIMIT == loop_client.NOTE_MAX_CHARS == loop_facts.NOTE_MAX_CHARS
    assert config.LOOP_GRADES is loop_facts.LOOP_GRADES
    assert config.LOOP_DISPOSITIONS is loop_facts.LOOP_DISPOSITIONS


def test_loop_states_are_plain_strings_in_the_default_order():
    assert loop_facts.LOOP_STATES == ("open", "closed", "cancelled", "review", "expired")
    assert all(type(s) is str for s in loop_facts.LOOP_STATES)  # YAML and SQL safe
    assert loop_facts.LoopState.OPEN == "open"


@pytest.mark.parametrize(("value", "expected"), [(2, 2), (2.0, 2), ("2", 2), (" 2.0 ", 2)])
def test_a_quantity_reads_whole_numbers_in_any_json_form(value, expected):
    assert whole_number(value, "quantity") == expected


@pytest.mark.parametrize("value", [2.0, "2.0", "1e0", "+2", "１", "²", -1, True, None])
def test_an_exact_quantity_reads_only_integers_and_ascii_digits(value):
    with pytest.raises(Unreadable, match="quantity"):
        whole_number(value, "quantity", exact=True)
    assert whole_number(" 7 ", "quantity", exact=True) == 7
