"""Test helpers shipped with loopsync (as `structlog.testing` and httpx's mock transport
are): for loopsync's own tests, and for anyone writing a connector.

- `FakeClock`: time that moves only when told to.
- `FakeLoop`, `FakeWarehouse`, `FakeRma`, `Page`: in-memory Loop and warehouse for engine
  tests; `FakeLoop` answers with the Loop emulator's state machine.
- `loop_return`, `loop_return_model`, `merchant_config`, `warehouse_settings`: factories.
- `InProcessAdapter`, `mount`, `in_process_url`, `emulated_loop`: an emulator's handler
  reached through `requests` without a socket, for the fast tests.
- `Sandbox`: the sandbox plus `merchant_config` and `run_cycle`.

This package sits above everything but the CLI: it may import the engine, the runner
and the sandbox; nothing below it imports it (`tests/test_layers.py`). Modules are
imported on first use of a name here, so `from loopsync.testing import FakeClock` does
not load the engine, the runner or graphql-core.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loopsync.testing.adapter import (
        InProcessAdapter,
        SocketFaultInProcess,
        in_process_url,
        mount,
    )
    from loopsync.testing.clock import FakeClock
    from loopsync.testing.factories import (
        loop_return,
        loop_return_model,
        merchant_config,
        warehouse_settings,
    )
    from loopsync.testing.fakes import FakeLoop, FakeRma, FakeWarehouse, Page
    from loopsync.testing.sandbox import Sandbox, emulated_loop

_WHERE = {
    "FakeClock": "clock",
    "FakeLoop": "fakes",
    "FakeRma": "fakes",
    "FakeWarehouse": "fakes",
    "Page": "fakes",
    "loop_return": "factories",
    "loop_return_model": "factories",
    "merchant_config": "factories",
    "warehouse_settings": "factories",
    "InProcessAdapter": "adapter",
    "SocketFaultInProcess": "adapter",
    "mount": "adapter",
    "in_process_url": "adapter",
    "Sandbox": "sandbox",
    "emulated_loop": "sandbox",
}

__all__ = [
    "FakeClock",
    "FakeLoop",
    "FakeRma",
    "FakeWarehouse",
    "InProcessAdapter",
    "Page",
    "Sandbox",
    "SocketFaultInProcess",
    "emulated_loop",
    "in_process_url",
    "loop_return",
    "loop_return_model",
    "merchant_config",
    "mount",
    "warehouse_settings",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'loopsync.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(f"loopsync.testing.{module}"), name)
