"""What every emulated warehouse offers the sandbox orchestrator, the demo and the tests."""

from __future__ import annotations

from typing import Any

from loopsync.sandbox.server import EmulatedApi
from loopsync.sandbox.webhooks import Source, WebhookSender

# The receiving scenarios every warehouse emulator understands.
SCENARIOS = ("full", "short", "over", "damaged", "cancelled")


class WarehouseEmulator(EmulatedApi):
    """An emulated warehouse API plus the hooks that play the warehouse's people."""

    kind = "warehouse"
    # The webhooks this warehouse sends (`sandbox/webhooks.py`), None if it sends none;
    # `webhook_sender` is set by the Sandbox when asked to send them.
    webhook_source: Source | None = None
    webhook_sender: WebhookSender | None = None

    def on_loop_return(self, loop_return: dict[str, Any], *, with_order: bool = True) -> None:
        """A return now exists in the emulated Loop. Make the warehouse know its order
        (unless with_order is False: tests of 'order not found'). Watch-only warehouses
        (Xoro) also import it as an RMA here, as their own Loop app would."""
        raise NotImplementedError

    def has_rma(self, return_id: str) -> bool:
        raise NotImplementedError

    def rma_count(self, return_id: str) -> int:
        """How many RMAs exist for this Loop return (the exactly-once invariant)."""
        raise NotImplementedError

    def receive(self, return_id: str, scenario: str) -> bool:
        """Play the warehouse receiving this return's goods (see SCENARIOS) and finishing
        it. Returns False when there is no RMA for it yet."""
        raise NotImplementedError

    def poison(self, return_id: str) -> bool:
        """Seed one record the connector cannot read (poison) for this return's RMA: the
        warehouse says it is finished, in a form no reader may trust (a lone surrogate, a
        full-width digit, an infinite quantity). A careful worker holds that return back,
        with the reason, and goes on with the others; it never acts on it. Returns False
        when there is no RMA for it yet."""
        raise NotImplementedError

    def warehouse_config(self, base_url: str) -> dict[str, Any]:
        """The `warehouse:` section of a merchant config that points at this emulator.
        Secrets appear as ${VAR} references; `secret_env()` gives their values."""
        raise NotImplementedError

    def secret_env(self) -> dict[str, str]:
        return {}
