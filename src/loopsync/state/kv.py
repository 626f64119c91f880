"""Small JSON values by (namespace, key): connectors' own state, the engine's evidence
and refusals, rate-limit history. Values pass through `redaction` on the way in."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loopsync.redaction import dumps_redacted

if TYPE_CHECKING:
    from loopsync.state import Store


@dataclass(frozen=True)
class KvEntry:
    namespace: str
    key: str
    value: Any


class StoreKeyValue:
    """One namespace of the kv table (connectors.base.KeyValue). `store` is kept for the
    HTTP layer, which looks at its connection to see whether a transaction is open."""

    def __init__(self, store: Store, namespace: str) -> None:
        self.store = store
        self.namespace = namespace

    def get(self, key: str, default: Any = None) -> Any:
        row = self.store.conn.execute(
            "select value from kv where namespace = ? and key = ?", [self.namespace, key]
        ).fetchone()
        return json.loads(row[0]) if row else default

    def set(self, key: str, value: Any) -> None:
        self.store.conn.execute(
            "insert into kv (namespace, key, value) values (?, ?, ?) "
            "on conflict (namespace, key) do update set value = excluded.value",
            [self.namespace, key, dumps_redacted(value)],
        )


def kv_with_prefix(store: Store, prefix: str) -> list[KvEntry]:
    """Every set kv entry whose key starts with `prefix`, across namespaces (for
    `status`: connectors write to their own namespace)."""
    rows = store.conn.execute(
        "select namespace, key, value from kv where substr(key, 1, ?) = ? order by namespace, key",
        [len(prefix), prefix],
    )
    return [
        KvEntry(str(ns), str(k), v) for ns, k, raw in rows if (v := json.loads(raw)) is not None
    ]
