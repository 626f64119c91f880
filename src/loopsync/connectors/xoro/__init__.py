"""Xoro (XoroERP REST, watch-only): the connector package.

`settings` reads the `warehouse:` keys, `wire` talks REST (Basic auth, the envelope,
paging), `mapping` turns ASNs into typed models (pure), `connector` is the glue the
engine uses. Facts and UNCONFIRMED points: docs/api/xoro.md.
"""

from loopsync.connectors.xoro.connector import XoroConnector
from loopsync.connectors.xoro.mapping import asn_matches, asn_status
from loopsync.connectors.xoro.settings import XoroSettings, parse_settings
from loopsync.connectors.xoro.wire import XoroClient, check_envelope
from loopsync.errors import XoroBusy, XoroRefused

__all__ = [
    "XoroBusy",
    "XoroClient",
    "XoroConnector",
    "XoroRefused",
    "XoroSettings",
    "asn_matches",
    "asn_status",
    "check_envelope",
    "parse_settings",
]
