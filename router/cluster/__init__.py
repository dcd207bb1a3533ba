"""Scale-out: several router processes act as one router, coordinated through Redis.

Kept apart from the single-process code: without `cluster` in the YAML nothing here is imported
by `serve` (except the config types), so the embedded default behaves exactly as before.
"""
