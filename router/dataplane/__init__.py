"""The data plane: accept, parse, match, choose, forward, relay, mirror."""
