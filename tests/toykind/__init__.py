"""A small example connector, added through the registry in tests/test_kinds.py and not
shipped: the files a new kind needs are this package (settings, wire, mapping,
connector), an emulator, an example config and one `ConnectorKind` line."""
