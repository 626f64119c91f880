"""The resharding procedure, simulated: N `serve --shard I/N` processes over M merchants
(each merchant its own sandbox Loop and 3PL), then N+1 by the README's steps: stop the
old owners, `shards plan`, `state export` / `state import` each moving merchant's state
into its new owner's folder (each shard its own folder, as each pod its own volume),
start N+1. Every merchant is run by exactly one process in each phase, no remote effect
happens twice, and nothing is lost: the returns added and received during the move are
pushed and processed by their new owners, which take the imported state as their own."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from loopsync import cli
from loopsync.effects import FOUND_RMAS
from loopsync.shards import owner
from loopsync.state import Store
from loopsync.testing import FakeClock
from loopsync.testing.sandbox import Sandbox

pytestmark = pytest.mark.slow

MERCHANTS = ("acme", "globex", "initech", "umbrella", "hooli", "stark")
OLD, NEW = 2, 3
WAIT = 60.0  # a safety cap only: each wait ends as soon as its condition holds


@pytest.fixture
def sandboxes() -> Iterator[dict[str, Sandbox]]:
    boxes = {m: Sandbox("generic", rate_limits=False).start() for m in MERCHANTS}
    yield boxes
    for box in boxes.values():
        box.stop()


def _configs(folder: Path, boxes: dict[str, Sandbox]) -> Path:
    """One file per merchant, no state_path: LOOPSYNC_STATE_DIR (the pod's volume) decides."""
    folder.mkdir()
    for merchant, box in boxes.items():
        doc = box.config_dict(merchant=merchant, every="10s")
        del doc["state_path"]
        (folder / f"{merchant}.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    return folder


class Fleet:
    """`serve` processes, one per shard, each with its own state folder and log."""

    def __init__(self, root: Path, configs: Path, env: dict[str, str]) -> None:
        self.root, self.configs, self.env = root, configs, env
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, count: int) -> None:
        for index in range(count):
            log = self.root / f"serve-{count}-{index}.log"
            # the volume is there before its pod starts (serve refuses a missing one, 73)
            self.state_dir(index).mkdir(exist_ok=True)
            env = self.env | {"LOOPSYNC_STATE_DIR": str(self.state_dir(index))}
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [
                        *(sys.executable, "-m", "loopsync", "serve", "-c", str(self.configs)),
                        *("--shard", f"{index}/{count}", "--log-format", "json"),
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            self.procs.append((proc, log))

    def state_dir(self, index: int) -> Path:
        return self.root / f"volume-{index}"

    def stop(self) -> dict[int, set[str]]:
        """SIGTERM every process; which merchants each one ran a cycle for."""
        for proc, _ in self.procs:
            proc.send_signal(signal.SIGTERM)
        ran: dict[int, set[str]] = {}
        for index, (proc, log) in enumerate(self.procs):
            assert proc.wait(timeout=WAIT) == 0, log.read_text()[-2000:]
            ran[index] = _cycled(log)
        self.procs = []
        return ran


def _cycled(log: Path) -> set[str]:
    found = set()
    for line in log.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "cycle.start":
            found.add(event["merchant"])
    return found


def _wait_for(done: Callable[[], bool], what: Callable[[], object]) -> None:
    deadline = time.monotonic() + WAIT
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting: {what()}"
        time.sleep(0.2)


def _effects(boxes: dict[str, Sandbox], ids: dict[str, list[str]]) -> dict[tuple[str, str], tuple]:
    return {
        (m, rid): (
            boxes[m].warehouse.rma_count(rid),
            len(boxes[m].loop.notes_for(rid)),
            tuple(boxes[m].loop.actions_for(rid)),
        )
        for m in MERCHANTS
        for rid in ids[m]
    }


def _open(box: Sandbox, n: int) -> list[str]:
    """n open returns updated in the last minute (after any cursor a cycle has stored)."""
    return [str(r["id"]) for r in box.seed(n, days=1 / 1440, states_weights=[("open", 1)])]


def _move(configs: Path, fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The README's steps 2-3: the plan, then each moving merchant's state carried over."""
    out = io.StringIO()
    assert (
        cli.main(["shards", "plan", "-c", str(configs), "--from", "2", "--to", "3"], out=out) == 0
    )
    moved = []
    for line in out.getvalue().splitlines()[:-1]:
        merchant, _, rest = line.partition(": shard ")
        source, target = (int(x) for x in rest.split(" -> shard "))
        cfg, file = str(configs / f"{merchant}.yaml"), fleet.root / f"{merchant}.export"
        monkeypatch.setenv("LOOPSYNC_STATE_DIR", str(fleet.state_dir(source)))
        assert cli.main(["state", "export", "-c", cfg, "--to", str(file)], out=out) == 0
        monkeypatch.setenv("LOOPSYNC_STATE_DIR", str(fleet.state_dir(target)))
        assert cli.main(["state", "import", "-c", cfg, "--from", str(file)], out=out) == 0
        for suffix in ("", "-wal", "-shm", ".lock"):  # the old owner's copy, now stale
            (fleet.state_dir(source) / f"{merchant}.sqlite{suffix}").unlink(missing_ok=True)
        moved.append(merchant)
    return moved


def test_resharding_n_to_n_plus_one_moves_state_and_repeats_and_loses_nothing(
    tmp_path: Path, sandboxes: dict[str, Sandbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    configs = _configs(tmp_path / "merchants", sandboxes)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPSYNC_")}
    for box in sandboxes.values():
        env |= box.env()
    ids = {m: _open(box, 3) for m, box in sandboxes.items()}
    fleet = Fleet(tmp_path, configs, env)

    # Phase 1: N shards push every return.
    fleet.start(OLD)
    _wait_for(
        lambda: all(v[:2] == (1, 1) for v in _effects(sandboxes, ids).values()),
        lambda: _effects(sandboxes, ids),
    )
    ran = fleet.stop()
    assert ran == {i: {m for m in MERCHANTS if owner(m, OLD) == i} for i in range(OLD)}

    # The move, with the fleet stopped; meanwhile Loop and the 3PL go on.
    moved = _move(configs, fleet, monkeypatch)
    assert moved and len(moved) < len(MERCHANTS), "the plan should move some, keep others"
    received = {m: ids[m][0] for m in MERCHANTS}
    for m, box in sandboxes.items():
        assert box.warehouse.receive(received[m], "full")
        ids[m] += _open(box, 2)

    # Phase 2: N+1 shards.
    fleet.start(NEW)

    def finished() -> bool:
        effects = _effects(sandboxes, ids)
        return all(v[:2] == (1, 1) for v in effects.values()) and all(
            effects[m, received[m]][2] == ("process",) for m in MERCHANTS
        )

    _wait_for(finished, lambda: _effects(sandboxes, ids))
    ran = fleet.stop()
    assert ran == {i: {m for m in MERCHANTS if owner(m, NEW) == i} for i in range(NEW)}

    for (m, rid), (rmas, notes, actions) in _effects(sandboxes, ids).items():
        assert (rmas, notes) == (1, 1), f"{m} {rid}: {rmas} RMAs, {notes} notes"
        assert actions == (("process",) if rid == received[m] else ()), (m, rid, actions)
    clock = FakeClock("2026-06-01T12:00:00Z")
    for m in moved:
        assert not (fleet.state_dir(owner(m, OLD)) / f"{m}.sqlite").exists()
        store = Store(fleet.state_dir(owner(m, NEW)) / f"{m}.sqlite", clock, read_only=True)
        try:
            found = [e for e in store.kv_with_prefix("") if e.namespace == FOUND_RMAS]
        finally:
            store.close()
        assert not found, f"{m}'s imported state was taken for a lost one"
