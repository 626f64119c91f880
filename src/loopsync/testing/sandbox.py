"""The sandbox with the conveniences that need the worker: load its merchant config and
run a cycle against it. They live here, not in `loopsync.sandbox`, so the sandbox stays a
lower layer (it never imports config, runner or the engine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from loopsync.config import MerchantConfig, load_config
from loopsync.cycle import CycleResult
from loopsync.http import RetryPolicy
from loopsync.loop_client import LoopClient
from loopsync.runner import run_merchant
from loopsync.sandbox import LOOP_KEY
from loopsync.sandbox import Sandbox as BareSandbox
from loopsync.sandbox.loop import LoopEmulator
from loopsync.testing.adapter import mount
from loopsync.timeutil import Clock

# Quick retries: a sandbox's faults are scripted, waiting longer proves nothing more.
SANDBOX_POLICY = RetryPolicy(attempts=6, base=0.05, cap=0.5, retry_after_cap=30)


class Sandbox(BareSandbox):
    """`loopsync.sandbox.Sandbox` plus `merchant_config` and `run_cycle`."""

    def merchant_config(self, directory: Path, **kw: Any) -> MerchantConfig:
        """Write this sandbox's merchant config into `directory` (state file beside it
        unless `state_path` is given) and load it as `loopsync run` would."""
        kw.setdefault("state_path", directory / f"{kw.get('merchant', 'sandbox')}.sqlite")
        return load_config(self.write_config(directory, **kw), env=self.env())

    def run_cycle(self, cfg: MerchantConfig, **kw: Any) -> CycleResult:
        """One cycle of `cfg` on the sandbox's clock (`runner.run_merchant` keywords)."""
        kw.setdefault("policy", SANDBOX_POLICY)
        return run_merchant(cfg, clock=self.clock, **kw)


def emulated_loop(
    clock: Clock, *, rate_limits: bool = False, **client_kw: Any
) -> tuple[LoopEmulator, LoopClient]:
    """An emulated Loop and a real `LoopClient` talking to it in process (no socket):
    Loop's state machine and wire format at the speed of a function call."""
    emulator = LoopEmulator(clock=clock, api_keys={LOOP_KEY})
    emulator.rate_limit_enabled = rate_limits
    session = requests.Session()
    url = mount(session, emulator)
    client_kw.setdefault("policy", SANDBOX_POLICY)
    client = LoopClient(f"{url}/api/v1", LOOP_KEY, clock=clock, session=session, **client_kw)
    return emulator, client
