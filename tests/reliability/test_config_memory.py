"""Loading a config again and again (every reload) keeps nothing of the files already loaded."""

from __future__ import annotations

import gc
import tracemalloc

import yaml

from router.config import parse_config

ROUTES = 200
LOADS = 5


def routing_file() -> str:
    routes = "\n".join(f"  - {{name: r{i}, match: {{path_prefix: /v1/models/m{i}}}, primary: v1, candidate: v2,"
                       f" split: {{candidate_percent: {i % 100}}}}}" for i in range(ROUTES))
    return ("listen: 127.0.0.1:8080\nbackends:\n  v1: {url: 'http://127.0.0.1:9001'}\n"
            "  v2: {url: 'http://127.0.0.1:9002'}\nroutes:\n" + routes + "\n")


def live_yaml_nodes() -> int:
    gc.collect()
    return sum(isinstance(o, yaml.Node) for o in gc.get_objects())


def test_no_yaml_node_outlives_its_load() -> None:
    text = routing_file()
    parse_config(text)
    before = live_yaml_nodes()

    for _ in range(LOADS):
        parse_config(text)

    assert live_yaml_nodes() == before


def test_repeated_loads_do_not_grow_memory() -> None:
    text = routing_file()
    parse_config(text)  # warm-up: imports, caches of the standard library
    tracemalloc.start()
    try:
        parse_config(text)
        gc.collect()
        one_load, _ = tracemalloc.get_traced_memory()
        for _ in range(LOADS):
            parse_config(text)
        gc.collect()
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # A load's working set is the peak; what a leak keeps is a fixed share of it per load.
    assert after - one_load < peak / 20, f"{LOADS} loads kept {after - one_load} bytes (peak {peak})"
