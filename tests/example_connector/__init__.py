"""An example warehouse connector, added through the registry in a test and never shipped:
the smallest honest connector of the standard shape, for an imaginary REST warehouse
("Shelfwise"), with its emulator and an example config. `tests/test_contract.py` registers
it (`connectors.register`) and runs the whole connector contract against it.

    settings.py   the connector's own `warehouse:` keys (parse_settings)
    wire.py       the HTTP client: auth header, error bodies, the paged listing walk
    mapping.py    pure: Loop return -> create body, Shelfwise return -> RmaStatus
                  (raises the one `Unreadable` with the field's name)
    connector.py  the glue the engine talks to (WarehouseConnector)
    emulator.py   the sandbox's Shelfwise (a WarehouseEmulator), sharing no code with the
                  connector
    example.yaml  a merchant config for the kind

The wire protocol (imaginary, REST/JSON, bearer token):

    GET  /v1/orders?name=#1001              {"orders": [{"id": "O1", "name": "#1001"}]}
    GET  /v1/returns?reference=A,B&cursor=  {"returns": [return...], "next_cursor": str|null}
    POST /v1/returns  {"reference", "order_id", "warehouse", "lines": [{"sku", "quantity"}]}
                      -> 201 {"return": return}; 409 when the reference exists; 422 refused
    return = {"id", "reference", "status": open|receiving|closed,
              "lines": [{"sku", "expected", "received", "condition": good|damaged|null}]}
"""

from loopsync.connectors import ConnectorKind

# The one registry line. Shipped, it is a row of `loopsync.connectors.KINDS`; here a test
# adds it for a while with `connectors.register(KIND)`.
KIND = ConnectorKind(
    "shelfwise",
    "tests.example_connector.connector:ShelfwiseConnector",
    "tests.example_connector.emulator:ShelfwiseEmulator",
    "tests/example_connector/example.yaml",
)
