"""``ssd-detect``: the client library and command line."""
