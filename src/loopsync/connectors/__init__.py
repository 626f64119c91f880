"""Warehouse connectors, looked up by `warehouse.kind`."""

from __future__ import annotations

import importlib

from loopsync.connectors.base import WarehouseConnector

# kind -> "module:Class"; imported only when a merchant uses that kind.
KINDS: dict[str, str] = {
    "shiphero": "loopsync.connectors.shiphero:ShipHeroConnector",
    "peoplevox": "loopsync.connectors.peoplevox:PeopleVoxConnector",
    "xoro": "loopsync.connectors.xoro:XoroConnector",
    "generic": "loopsync.connectors.generic:GenericConnector",
}


def available_kinds() -> list[str]:
    """Kinds whose module is present in this installation."""
    out = []
    for kind, target in KINDS.items():
        module = target.split(":")[0]
        if importlib.util.find_spec(module) is not None:
            out.append(kind)
    return out


def connector_class(kind: str) -> type[WarehouseConnector]:
    target = KINDS.get(kind)
    if target is None:
        raise KeyError(kind)
    module_name, cls_name = target.split(":")
    module = importlib.import_module(module_name)
    cls: type[WarehouseConnector] = getattr(module, cls_name)
    return cls
