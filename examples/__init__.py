"""Runnable examples; not part of the router package."""
