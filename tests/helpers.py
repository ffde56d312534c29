"""Helpers shared by the shared-store tests: hostile payloads and cluster clients."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

from redis.cluster import ClusterNode, RedisCluster


def exploit(marker: Path) -> bytes:
    """A pickle that creates the file ``marker`` when it is loaded."""

    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    return pickle.dumps(Exploit())


def cluster_client(nodes: list[tuple[str, int]]) -> RedisCluster:
    """A RedisCluster client for the test cluster, with test-friendly timeouts."""
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        socket_connect_timeout=1,
        socket_timeout=2,
    )
