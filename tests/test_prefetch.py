"""prefetched(): the ingest read-ahead keeps order, raises where the source raised, and
stops its thread when the consumer stops early."""

import threading

import pytest

from loopsync.prefetch import prefetched, read_ahead_when_waiting


def test_items_come_in_order():
    assert list(prefetched(iter(range(50)))) == list(range(50))


def test_an_error_comes_after_the_items_before_it():
    def source():
        yield 1
        yield 2
        raise LookupError("page 3 broke")

    got = []
    with pytest.raises(LookupError, match="page 3"):
        for item in prefetched(source()):
            got.append(item)  # noqa: PERF402 - the items read before the source raised
    assert got == [1, 2]


def test_reads_at_most_one_item_ahead():
    produced = []

    def source():
        for n in range(10):
            produced.append(n)
            yield n

    gen = prefetched(source())
    assert next(gen) == 0
    threading.Event().wait(0.2)  # give the thread every chance to run ahead
    # item 1 waits in the hand-off; item 2 is produced and blocks on the full hand-off
    assert len(produced) <= 3
    gen.close()


def test_stopping_early_ends_the_thread():
    before = {t.ident for t in threading.enumerate()}

    def endless():
        n = 0
        while True:
            yield n
            n += 1

    for item in prefetched(endless(), name="test-prefetch"):
        if item == 3:
            break
    assert not [
        t for t in threading.enumerate() if t.name == "test-prefetch" and t.ident not in before
    ]


class FakeClocks:
    """Wall and thread-CPU clocks a source moves: `idle` seconds of waiting per item."""

    def __init__(self, idle: list[float]) -> None:
        self.idle = idle
        self.now = 0.0

    def wall(self) -> float:
        return self.now

    def cpu(self) -> float:
        return 0.0

    def source(self, threads: list[str]):
        for n, idle in enumerate(self.idle):
            self.now += idle
            threads.append(threading.current_thread().name)
            yield n


def test_items_that_come_at_once_are_read_in_the_consumers_thread():
    clocks, threads = FakeClocks([0.001] * 6), []
    got = list(
        read_ahead_when_waiting(
            clocks.source(threads), name="ahead", min_wait=0.005, wall=clocks.wall, cpu=clocks.cpu
        )
    )
    assert got == list(range(6))
    assert set(threads) == {threading.current_thread().name}


def test_from_the_first_item_that_waited_the_rest_are_read_ahead_in_order():
    clocks, threads = FakeClocks([0.001, 0.001, 0.05, 0.0, 0.0, 0.0]), []
    got = list(
        read_ahead_when_waiting(
            clocks.source(threads), name="ahead", min_wait=0.005, wall=clocks.wall, cpu=clocks.cpu
        )
    )
    assert got == list(range(6))
    me = threading.current_thread().name
    assert threads[:3] == [me] * 3 and set(threads[3:]) == {"ahead"}


def test_an_error_of_a_source_read_inline_or_ahead_comes_after_the_items_before_it():
    for idle in (0.0, 1.0):
        clocks = FakeClocks([idle, idle])

        def source(clocks=clocks):
            yield from clocks.source([])
            raise LookupError("page 3 broke")

        got = []
        with pytest.raises(LookupError, match="page 3"):
            for item in read_ahead_when_waiting(
                source(), min_wait=0.5, wall=clocks.wall, cpu=clocks.cpu
            ):
                got.append(item)  # noqa: PERF402 - the items read before the source raised
        assert got == [0, 1]
