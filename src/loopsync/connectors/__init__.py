"""Warehouse connectors: the one registry of kinds.

`KINDS` is the single source of truth for every list of warehouse kinds: the CLI's
choices, the sandbox's emulators, the demo, the tests' parametrisation, the benchmarks
and the soak all read it. Adding a connector is one package under `connectors/`, one
emulator under `sandbox/`, one example under `examples/` and one line here.

Targets are "module:attribute" strings, imported only when a merchant (or a test) uses
that kind, so one connector's import cost or optional dependency never touches another.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:  # the sandbox is a lower layer's test double; typing only
    from loopsync.connectors.base import WarehouseConnector
    from loopsync.sandbox.base import WarehouseEmulator


def _load(target: str) -> object:
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


@dataclass(frozen=True)
class ConnectorKind:
    """One warehouse kind: where its connector, its emulator and its example live."""

    name: str  # the `warehouse.kind` value
    connector: str  # "module:Class" of the WarehouseConnector
    emulator: str  # "module:Class" of the sandbox's WarehouseEmulator
    example: str  # example merchant config, relative to the repository root
    creates_rmas: bool = True  # False: watch-only (the warehouse's own Loop app creates them)
    # How the connector can reach the warehouse (`warehouse.transport`); the first is the
    # default, the others are variants the tests, benchmarks and soak run too.
    transports: tuple[str, ...] = ("http",)

    @property
    def module(self) -> str:
        return self.connector.partition(":")[0]

    @property
    def package(self) -> str:
        """The kind's package (`loopsync.connectors.<kind>`): found without importing it,
        since importing its `connector` module would run the package, and every kind's."""
        return self.module.rpartition(".")[0] or self.module

    def load(self) -> type[WarehouseConnector]:
        from loopsync.connectors.base import WarehouseConnector

        cls = _load(self.connector)
        if not (isinstance(cls, type) and issubclass(cls, WarehouseConnector)):
            raise TypeError(f"{self.connector} is not a WarehouseConnector")
        return cls

    def load_emulator(self) -> type[WarehouseEmulator]:
        # Not checked against WarehouseEmulator at run time: that would make this layer
        # import the sandbox (tests/test_layers.py); the sandbox checks what it starts.
        cls = _load(self.emulator)
        if not isinstance(cls, type):
            raise TypeError(f"{self.emulator} is not a class")
        return cast("type[WarehouseEmulator]", cls)


KINDS: dict[str, ConnectorKind] = {
    k.name: k
    for k in (
        ConnectorKind(
            "shiphero",
            "loopsync.connectors.shiphero.connector:ShipHeroConnector",
            "loopsync.sandbox.shiphero:ShipHeroEmulator",
            "config.example.yaml",
        ),
        ConnectorKind(
            "peoplevox",
            "loopsync.connectors.peoplevox.connector:PeopleVoxConnector",
            "loopsync.sandbox.peoplevox:PeopleVoxEmulator",
            "examples/peoplevox.yaml",
        ),
        ConnectorKind(
            "xoro",
            "loopsync.connectors.xoro.connector:XoroConnector",
            "loopsync.sandbox.xoro:XoroEmulator",
            "examples/xoro.yaml",
            creates_rmas=False,
        ),
        ConnectorKind(
            "generic",
            "loopsync.connectors.generic.connector:GenericConnector",
            "loopsync.sandbox.generic:GenericEmulator",
            "examples/generic-http.yaml",
            transports=("http", "folder"),
        ),
    )
}


def kind_names() -> list[str]:
    """Every registered kind, in registry order (the CLI's choices)."""
    return list(KINDS)


def iter_kinds() -> Iterator[ConnectorKind]:
    return iter(KINDS.values())


def variants() -> list[tuple[str, str]]:
    """Every (kind, transport) pair, in registry order: what the suites run over."""
    return [(k.name, transport) for k in KINDS.values() for transport in k.transports]


def variant_name(kind: str, transport: str) -> str:
    """A variant's label: the kind for its default transport, else "<kind>-<transport>"."""
    return kind if transport == KINDS[kind].transports[0] else f"{kind}-{transport}"


def available_kinds() -> list[str]:
    """Kinds whose module is present in this installation."""
    return [k.name for k in KINDS.values() if importlib.util.find_spec(k.package) is not None]


def connector_class(kind: str) -> type[WarehouseConnector]:
    """The connector class of `kind`; KeyError when no such kind is registered."""
    return KINDS[kind].load()


@contextmanager
def register(kind: ConnectorKind) -> Iterator[ConnectorKind]:
    """Add `kind` to KINDS for the duration of a `with` block (a test's example or
    third-party connector); removed again on exit. A name already registered is refused:
    a test must not replace a shipped kind by accident."""
    if kind.name in KINDS:
        raise ValueError(f"warehouse kind {kind.name!r} is already registered")
    KINDS[kind.name] = kind
    try:
        yield kind
    finally:
        KINDS.pop(kind.name, None)
