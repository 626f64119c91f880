"""The built-in sandbox: an emulated Loop and one emulated warehouse, served over real
HTTP on 127.0.0.1, seeded with realistic returns, with a record of every call.

    with Sandbox(warehouse="shiphero") as sb:
        sb.seed(12)
        path = sb.write_config(tmp_path)          # a merchant config pointing at it
        sb.warehouse.receive(return_id, "short")

The sandbox is a lower layer: it imports the emulators, the connector registry (which
emulator plays which kind) and the time helpers, never the worker (config, runner, engine,
cli). Loading its config and running cycles against it are `loopsync.testing.Sandbox`'s.

Many merchants (the fleet benchmark): `fleet_key(merchant)` gives each merchant a Loop key
of its own, so Loop's per-key rate limit applies to each as it would in production, and
`config_dict(loop_key_env=...)` names the variable that holds it. The merchants then share
one shop's returns and one warehouse account: honest for idle merchants (each polls Loop
and its warehouse on its own schedule), not for returns, which every merchant would take.
"""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path
from typing import Any, Self

# PyYAML ships no type information; its stubs may or may not be installed.
import yaml  # type: ignore[import-untyped,unused-ignore]

from loopsync.connectors import KINDS
from loopsync.sandbox.base import WarehouseEmulator
from loopsync.sandbox.generic import GenericEmulator
from loopsync.sandbox.loop import LoopEmulator
from loopsync.sandbox.seed import FIRST_RETURN_ID, make_returns
from loopsync.sandbox.server import ApiServer, Recorder
from loopsync.sandbox.webhooks import (
    DeliveryPolicy,
    Source,
    WebhookFaults,
    WebhookSender,
    WebhookTarget,
)
from loopsync.timeutil import Clock, SystemClock, iso

LOOP_KEY = "sandbox-loop-key-0001"
# The webhook secrets the sandbox's senders sign with (made up, as LOOP_KEY is), and the
# environment variables a merchant config names them by (`webhooks: <source>_secret`).
WEBHOOK_SECRETS = {
    Source.LOOP: "sandbox-loop-webhook-secret",
    Source.SHIPHERO: "sandbox-shiphero-webhook-secret",
    Source.GENERIC: "sandbox-3pl-webhook-secret",
}
WEBHOOK_SECRET_ENV = {
    Source.LOOP: "LOOP_WEBHOOK_SECRET",
    Source.SHIPHERO: "SHIPHERO_WEBHOOK_SECRET",
    Source.GENERIC: "THREEPL_WEBHOOK_SECRET",
}


# The optional dependencies of the emulators (graphql-core for ShipHero's) come with
# this extra: `pip install 'loopsync[sandbox]'` (the `test` extra includes it).
EXTRA = "sandbox"


def emulator_class(kind: str) -> type[WarehouseEmulator]:
    """The emulator of a registered warehouse kind (`connectors.KINDS`); KeyError if none.
    ModuleNotFoundError, saying which extra to install, when its dependency is missing."""
    try:
        return KINDS[kind].load_emulator()
    except ModuleNotFoundError as exc:
        if (exc.name or "loopsync").partition(".")[0] == "loopsync":
            raise
        raise ModuleNotFoundError(
            f"the {kind} sandbox needs {exc.name}, which is not installed: "
            f"pip install 'loopsync[{EXTRA}]'",
            name=exc.name,
        ) from None


class Sandbox:
    def __init__(
        self,
        warehouse: str = "shiphero",
        *,
        clock: Clock | None = None,
        loop_port: int = 0,
        warehouse_port: int = 0,
        rate_limits: bool = True,
        seed: int = 7,
        transport: str = "http",
        folder_root: Path | None = None,
    ) -> None:
        self.kind = warehouse
        self.clock = clock or SystemClock()
        self.rng = random.Random(seed)
        self.recorder = Recorder()
        self.transport = transport
        self.folder_root = folder_root
        self.loop = LoopEmulator(clock=self.clock, api_keys={LOOP_KEY})
        self.loop.rate_limit_enabled = rate_limits
        self.loop.recorder = self.recorder
        self.warehouse = emulator_class(warehouse)(clock=self.clock)
        self.warehouse.recorder = self.recorder
        self._set_warehouse_rate_limits(rate_limits)
        self.loop_server = ApiServer(self.loop, loop_port)
        self.warehouse_server = ApiServer(self.warehouse, warehouse_port)
        self._started = False
        self._next_id = FIRST_RETURN_ID
        self._seed = seed
        self.webhook_sender: WebhookSender | None = None
        self._fleet_env: dict[str, str] = {}  # fleet_key's variables

    def _set_warehouse_rate_limits(self, enabled: bool) -> None:
        for attr in ("rate_limit_enabled", "throttle_enabled", "credits_enabled"):
            if hasattr(self.warehouse, attr):
                setattr(self.warehouse, attr, enabled)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Self:
        if not self._started:
            self.loop_server.start()
            self.warehouse_server.start()
            self._started = True
        return self

    def stop(self) -> None:
        if self.webhook_sender is not None:
            self.webhook_sender.close()
        if self._started:
            self.loop_server.stop()
            self.warehouse_server.stop()
            self._started = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def loop_url(self) -> str:
        return f"{self.loop_server.url}/api/v1"

    @property
    def warehouse_url(self) -> str:
        return self.warehouse_server.url

    # -- webhooks -----------------------------------------------------------------------------
    @property
    def webhook_sources(self) -> list[Source]:
        """Who sends webhooks here: Loop, and the warehouse where its kind sends any."""
        found = self.warehouse.webhook_source
        return [Source.LOOP] if found is None else [Source.LOOP, found]

    def webhook_targets(self, base_url: str, merchant: str = "sandbox") -> list[WebhookTarget]:
        """One merchant's intake on a worker at `base_url`: each source's webhooks go to
        /webhooks/<source>/<merchant>, signed with the sandbox's secret for it."""
        base = base_url.rstrip("/")
        return [
            WebhookTarget(s, f"{base}/webhooks/{s}/{merchant}", WEBHOOK_SECRETS[s])
            for s in self.webhook_sources
        ]

    def send_webhooks(
        self,
        targets: list[WebhookTarget],
        *,
        faults: WebhookFaults | None = None,
        seed: int | None = None,
        policy: DeliveryPolicy | None = None,
    ) -> WebhookSender:
        """From now on the emulated Loop and warehouse send their webhooks to `targets`
        (with `faults` drawn from `seed`, the sandbox's own by default), from a background
        sender that stops with the sandbox."""
        if self.webhook_sender is not None:
            self.webhook_sender.close()
        sender = WebhookSender(
            self.clock,
            targets,
            faults=faults,
            seed=self._seed if seed is None else seed,
            policy=policy,
        )
        self.webhook_sender = self.loop.webhook_sender = self.warehouse.webhook_sender = sender
        return sender.start()

    # -- data ---------------------------------------------------------------------------------
    def add_return(self, raw: dict[str, Any], *, with_order: bool = True) -> dict[str, Any]:
        self.loop.add_return(raw)
        self.warehouse.on_loop_return(raw, with_order=with_order)
        return raw

    def seed(
        self, n: int, *, days: float = 3, with_order: bool = True, **kw: Any
    ) -> list[dict[str, Any]]:
        """n realistic returns updated during the last `days` days (sandbox clock)."""
        now = self.clock.now()
        kw.setdefault("first_id", self._next_id)
        returns = make_returns(n, start=now - timedelta(days=days), end=now, rng=self.rng, **kw)
        self._next_id = max(self._next_id, kw["first_id"] + n)
        for raw in returns:
            self.add_return(raw, with_order=with_order)
        return returns

    # -- configuration ------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        hooks = {WEBHOOK_SECRET_ENV[s]: WEBHOOK_SECRETS[s] for s in self.webhook_sources}
        return {
            "LOOP_API_KEY": LOOP_KEY,
            **self.warehouse.secret_env(),
            **hooks,
            **self._fleet_env,
        }

    def fleet_key(self, merchant: str) -> str:
        """A Loop key of `merchant`'s own (every scope; the emulator limits each key
        apart), added to `env()` under the name it returns, for `config_dict(loop_key_env=)`."""
        tag = "".join(c if c.isascii() and c.isalnum() else "_" for c in merchant).upper()
        name = f"LOOP_API_KEY_{tag}"
        key = f"sandbox-loop-key-{tag.lower()}"
        self.loop.api_keys[key] = self.loop.api_keys[LOOP_KEY]
        self._fleet_env[name] = key
        return name

    def config_dict(
        self,
        *,
        merchant: str = "sandbox",
        state_path: str | Path | None = None,
        start_days: float = 30,
        every: str = "1m",
        warehouse_extra: dict[str, Any] | None = None,
        webhooks: dict[str, Any] | None = None,
        loop_key_env: str = "LOOP_API_KEY",
        **loop_extra: Any,
    ) -> dict[str, Any]:
        """A merchant config for this sandbox; `webhooks` (a dict, {} for the defaults)
        adds a `webhooks:` section naming the secrets of every source that sends here."""
        start = self.clock.now() - timedelta(days=start_days)
        if self.kind == "generic" and self.transport == "folder":
            assert self.folder_root is not None, "folder transport needs folder_root"
            assert isinstance(self.warehouse, GenericEmulator), "folders are generic's"
            warehouse = self.warehouse.folder_config(self.folder_root)
        else:
            warehouse = self.warehouse.warehouse_config(self.warehouse_url)
        warehouse.update(warehouse_extra or {})
        hooks = {} if webhooks is None else {"webhooks": self._webhook_section(webhooks)}
        return {
            "merchant": merchant,
            "state_path": str(state_path or f"./state/{merchant}.sqlite"),
            "schedule": {"every": every},
            "loop": {
                "base_url": self.loop_url,
                "api_key": f"${{{loop_key_env}}}",
                "start_at": iso(start.replace(microsecond=0)),
                "lookback": "15m",
                **loop_extra,
            },
            "warehouse": warehouse,
            **hooks,
        }

    def _webhook_section(self, extra: dict[str, Any]) -> dict[str, Any]:
        names = {s: f"${{{WEBHOOK_SECRET_ENV[s]}}}" for s in self.webhook_sources}
        return {**{f"{s}_secret": ref for s, ref in names.items()}, **extra}

    def write_config(self, directory: Path, **kw: Any) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        data = self.config_dict(**kw)
        path = directory / f"{data['merchant']}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path
