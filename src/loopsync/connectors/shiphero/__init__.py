"""ShipHero (GraphQL): the connector package.

`settings` reads the `warehouse:` keys, `wire` talks GraphQL (auth, credits, paging),
`mapping` turns answers into typed models (pure), `connector` is the glue the engine uses.
Facts and UNCONFIRMED points: docs/api/shiphero.md.
"""

from loopsync.connectors.shiphero.connector import ShipHeroConnector
from loopsync.connectors.shiphero.settings import ShipHeroSettings, parse_settings
from loopsync.connectors.shiphero.wire import CreditBucket, ShipHeroClient, shared_bucket

__all__ = [
    "CreditBucket",
    "ShipHeroClient",
    "ShipHeroConnector",
    "ShipHeroSettings",
    "parse_settings",
    "shared_bucket",
]
