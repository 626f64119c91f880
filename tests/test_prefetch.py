"""prefetched(): the ingest read-ahead keeps order, raises where the source raised, and
stops its thread when the consumer stops early."""

import threading

import pytest

from loopsync.prefetch import prefetched


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
            got.append(item)
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
