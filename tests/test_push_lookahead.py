"""The push stage hands the connector its coming returns a window at a time (`prepare`),
so look-ups can be batched; the backlog's order and batches are unchanged."""

from __future__ import annotations

from collections.abc import Sequence

from loopsync.stages.push import LOOKAHEAD, Backlog


def test_each_return_is_prepared_once_in_windows_ahead_of_its_push():
    windows: list[list[str]] = []

    def prepare(ahead: Sequence[str]) -> None:
        windows.append(list(ahead))

    ids = [str(n) for n in range(2 * LOOKAHEAD + 7)]
    backlog = Backlog(ids, prepare)
    taken = []
    while not backlog.done:
        rid = backlog.take()
        assert any(rid in w for w in windows)  # prepared before it is pushed
        taken.append(rid)
    assert taken == ids
    assert [len(w) for w in windows] == [LOOKAHEAD, LOOKAHEAD, 7]
    assert [rid for w in windows for rid in w] == ids


def test_a_backlog_without_prepare_takes_its_returns_as_before():
    backlog = Backlog(["a", "b"])
    assert [backlog.take(), backlog.take()] == ["a", "b"] and backlog.done
