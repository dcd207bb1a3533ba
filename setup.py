"""Optional native build of the data path with mypyc (MODEL_ROUTER_NATIVE=1).

The package is pure Python and runs unchanged without it. With it, the modules every request goes
through are compiled to C extensions that sit beside their sources (`make native` builds them in
place, which is what `make test` and `make bench` run against; the Dockerfile builds them into the
wheel). Metadata lives in pyproject.toml; this file only adds the extensions.
"""

import os

from setuptools import Extension, setup

# The per-request path: parsing, matching, choosing, forwarding, relaying, counting. A compiled class
# that interpreted code subclasses (the ledger: router.cluster) says so with
# `mypyc_attr(allow_interpreted_subclasses=True)`.
NATIVE = [
    "router/dataplane/server.py",
    "router/dataplane/reqparse.py",
    "router/dataplane/clientside.py",
    "router/dataplane/proxy.py",
    "router/dataplane/upstream.py",
    "router/dataplane/http11.py",
    "router/dataplane/request.py",
    "router/dataplane/table.py",
    "router/dataplane/policy.py",
    "router/dataplane/balancer.py",
    "router/dataplane/shadow.py",
    "router/dataplane/shadowplan.py",
    "router/dataplane/llmproxy.py",
    "router/analysis/llm.py",
    "router/control/llmstats.py",
    "router/runtime.py",
    "router/analysis/histogram.py",
    "router/analysis/compare.py",
    "router/analysis/instances.py",
    "router/analysis/extract.py",
    "router/analysis/jsonpath.py",
    "router/control/ledger.py",
    "router/control/shadowstats.py",
    "router/cluster/shared_ledger.py",
    "router/control/window.py",
    "router/control/splits.py",
    "router/control/timeseries.py",
    "router/observe/monitor.py",
    "router/observe/alerts.py",
]

# Hand-written C, for the one loop where per-byte work in compiled Python still costs more than
# the C it replaces (dataplane/fastparse.py says why). Each is optional: without it the module
# that imports it falls back to llhttp.
C_EXTENSIONS = [
    "router/dataplane/_headscan.c",
]

ext_modules = []
if os.environ.get("MODEL_ROUTER_NATIVE") == "1":
    from mypyc.build import mypycify

    # group_name inside the package: the shared runtime library lands in router/, not at the top level.
    ext_modules = mypycify(NATIVE, group_name="router.native", opt_level="3")
    ext_modules += [Extension(path[:-2].replace("/", "."), [path], extra_compile_args=["-O3"])
                    for path in C_EXTENSIONS]

setup(ext_modules=ext_modules)
