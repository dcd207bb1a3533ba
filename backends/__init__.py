"""Example model backends for the demo, the tests and the benchmark."""
