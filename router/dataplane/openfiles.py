"""The open-files limit at start: every client connection and every backend connection is a file
descriptor, and the usual soft limit (1,024) is far below the default `max_connections` (10,000).

Like Go's runtime and nginx's `worker_rlimit_nofile`, the router raises its soft limit towards the
hard one, as far as its config can use; if that is still too low it says so at start, rather than
failing later with "Too many open files" under load.
"""

from __future__ import annotations

import resource

from router.config import Config

HEADROOM = 64  # listeners, state and log files, the event loop's own descriptors


def needed(config: Config) -> int:
    """Descriptors the config may use at once: clients, backend pools, and some headroom."""
    pools = sum(len(b.endpoints) * b.max_connections for b in config.backends.values())
    return config.limits.max_connections + pools + HEADROOM


def raise_limit(wanted: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to `wanted`, or the hard limit if lower; returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # a container may forbid it: the warning below still tells the operator
    return soft, hard


def check(config: Config) -> str | None:
    """Raise the limit for `config`; a warning when it is still too low, else None."""
    wanted = needed(config)
    soft, hard = raise_limit(wanted)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return None
    return (f"open-files limit is {soft} (hard limit {hard}) but limits.max_connections "
            f"({config.limits.max_connections}) and the backend pools may need {wanted}: connections past the "
            "limit fail with 'Too many open files'. Raise the hard limit (ulimit -Hn, LimitNOFILE=, "
            "docker --ulimit nofile=) or lower limits.max_connections")
