"""The whole worker in the ASN-close model: emulated Loop plus emulated Xoro or the sandbox
3PL (HTTP and folders), over real HTTP on 127.0.0.1 with a shared FakeClock."""

import shutil

from loopsync.sandbox.server import Fault


def open_returns(sb, n):
    return [str(r["id"]) for r in sb.seed(n, states_weights=[("open", 1)])]


def loop_writes(sb):
    return [c for c in sb.recorder.calls("loop") if c.write]


def cycle(sb, cfg, clock):
    clock.advance(60)
    result = sb.run_cycle(cfg)
    assert result.ok, result.stage_errors
    return result


def assert_rerun_writes_nothing(sb, cfg, clock):
    before = len(loop_writes(sb))
    cycle(sb, cfg, clock)
    assert len(loop_writes(sb)) == before, "a rerun wrote to Loop again"


# -- Xoro: watch-only -----------------------------------------------------------------------


def test_xoro_asn_close_decides(make_sandbox, tmp_path, clock):
    sb = make_sandbox("xoro")
    full, short, over, open_received, untouched = open_returns(sb, 5)
    cfg = sb.merchant_config(tmp_path)
    first = cycle(sb, cfg, clock)
    assert (first.counts.linked, first.counts.pushed) == (5, 0)
    # Watching: one note per return naming the matched ASN (as creating connectors
    # leave one naming the RMA), no action yet.
    assert all(c.path.endswith("/note") for c in loop_writes(sb)) and len(loop_writes(sb)) == 5
    assert all(
        len(sb.loop.notes_for(rid)) == 1 and "ASN" in sb.loop.notes_for(rid)[0]
        for rid in (full, short, over, open_received, untouched)
    )
    for rid, scenario in ((full, "full"), (short, "short"), (over, "over")):
        sb.warehouse.receive(rid, scenario)
    asn = sb.warehouse.asn(open_received)
    sb.warehouse.receive_lines(open_received, {ln.sku: ln.expected for ln in asn.lines})

    second = cycle(sb, cfg, clock)
    assert (second.counts.processed, second.counts.flagged) == (1, 2)
    assert sb.loop.actions_for(full) == ["process"]
    assert sb.loop.actions_for(short) == ["flag"] and "short" in sb.loop.notes_for(short)[-1]
    assert sb.loop.actions_for(over) == ["flag"] and "over" in sb.loop.notes_for(over)[-1]
    assert sb.loop.actions_for(open_received) == [] == sb.loop.actions_for(untouched)
    assert_rerun_writes_nothing(sb, cfg, clock)

    sb.warehouse.close_asn(open_received)
    cycle(sb, cfg, clock)
    assert sb.loop.actions_for(open_received) == ["process"]
    assert all(sb.warehouse.rma_count(rid) == 1 for rid in (full, short, over, untouched))


# -- generic 3PL over HTTP ------------------------------------------------------------------


def test_generic_http_delivers_and_decides(make_sandbox, tmp_path, clock):
    sb = make_sandbox("generic")
    ids = open_returns(sb, 5)
    cfg = sb.merchant_config(tmp_path)
    assert cycle(sb, cfg, clock).counts.pushed == 5
    assert all(sb.warehouse.rma_count(rid) == 1 for rid in ids)
    assert sb.warehouse.bad_signatures == []
    assert all("3PL RMA" in sb.loop.notes_for(rid)[0] for rid in ids)
    scenarios = dict(zip(ids, ["full", "short", "damaged", "over", "cancelled"], strict=True))
    for rid, scenario in scenarios.items():
        sb.warehouse.receive(rid, scenario)

    second = cycle(sb, cfg, clock)
    assert (second.counts.processed, second.counts.flagged) == (1, 3)
    actions = {scenarios[rid]: sb.loop.actions_for(rid) for rid in ids}
    assert actions == {
        "full": ["process"],
        "short": ["flag"],
        "damaged": ["flag"],
        "over": ["flag"],
        "cancelled": [],
    }
    by_scenario = {s: rid for rid, s in scenarios.items()}
    assert "missing" in sb.loop.notes_for(by_scenario["short"])[-1]
    assert "damaged" in sb.loop.notes_for(by_scenario["damaged"])[-1]
    # The receipts are served again inside the overlap: nothing fires twice.
    assert_rerun_writes_nothing(sb, cfg, clock)
    assert all(sb.warehouse.deliveries[rid] == 1 for rid in ids)


def test_generic_http_lost_post_answer_is_looked_up_not_repeated(make_sandbox, tmp_path, clock):
    sb = make_sandbox("generic")
    (rid,) = open_returns(sb, 1)
    cfg = sb.merchant_config(tmp_path)
    sb.warehouse.faults.inject(Fault("reset_after"), when=lambda r: r.method == "POST")
    first = sb.run_cycle(cfg)
    assert first.counts.pushed == 0 and sb.warehouse.deliveries[rid] == 1
    second = cycle(sb, cfg, clock)
    assert second.counts.linked == 1
    assert sb.warehouse.deliveries[rid] == 1 and sb.warehouse.rma_count(rid) == 1


# -- generic 3PL over folders ---------------------------------------------------------------


def test_generic_folders_archive_reject_and_count_once(make_sandbox, tmp_path, clock):
    root = tmp_path / "3pl"
    sb = make_sandbox("generic", transport="folder", folder_root=root)
    full, damaged, waiting = open_returns(sb, 3)
    cfg = sb.merchant_config(tmp_path)
    assert cycle(sb, cfg, clock).counts.pushed == 3
    assert sorted(p.name for p in (root / "outbox").iterdir()) == sorted(
        f"{rid}.csv" for rid in (full, damaged, waiting)
    )
    sb.warehouse.receive(full, "full")
    sb.warehouse.receive(damaged, "damaged")
    receipt = next(p for p in (root / "inbox").iterdir() if full in p.name)
    shutil.copy(receipt, receipt.with_name("resent-" + receipt.name))
    sb.warehouse.write_inbox_file("broken.csv", "rma,qty\n1,2\n")

    second = cycle(sb, cfg, clock)
    assert (second.counts.processed, second.counts.flagged) == (1, 1)
    assert sb.loop.actions_for(full) == ["process"]
    assert sb.loop.actions_for(damaged) == ["flag"]
    assert sb.loop.actions_for(waiting) == []
    assert list((root / "inbox").iterdir()) == []
    assert sorted(p.name for p in (root / "rejected").iterdir()) == [
        "broken.csv",
        "broken.csv.reason.txt",
    ]
    assert len(list((root / "archive").iterdir())) == 3

    # The same receipts once more, after their files were archived: nothing fires again.
    shutil.copy(root / "archive" / receipt.name, root / "inbox" / ("late-" + receipt.name))
    assert_rerun_writes_nothing(sb, cfg, clock)
    assert list((root / "inbox").iterdir()) == []
