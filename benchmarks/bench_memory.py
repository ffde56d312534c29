"""ProcessMemoryStore hits against the floor: a plain dict lookup plus the same snapshot copy.

Run: ``.venv-bench/bin/python benchmarks/bench_memory.py``.  Each figure is the median of
several rounds of many calls, in one process and one run, so the ratios compare like with
like even on a shared machine whose absolute speed drifts.
"""

from __future__ import annotations

import argparse
import platform

from common import User, per_call

from sa_stockpyle.snapshots import restore, snapshot
from sa_stockpyle.stores import ProcessMemoryStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    users = [User(i) for i in range(args.objects)]
    store = ProcessMemoryStore()
    store.batch_put(users)
    plain = {user.id: (User, snapshot(user)) for user in users}
    batch_ids = list(range(0, 1000))

    def store_get() -> object:
        return store.get(User, 4242)

    def store_get_alt() -> object:
        return store.get(User, {"email": "user4242@example.com"})

    def dict_get() -> object:
        klass, state = plain[4242]
        return restore(klass, state)

    def store_batch() -> object:
        return store.batch_get(User, batch_ids)

    def dict_batch() -> object:
        return [restore(*plain[i]) for i in batch_ids]

    rows = [
        (
            "get by primary key",
            per_call(store_get, 20_000, args.rounds),
            per_call(dict_get, 20_000, args.rounds),
        ),
        (
            "get by alternate key",
            per_call(store_get_alt, 20_000, args.rounds),
            per_call(dict_get, 20_000, args.rounds),
        ),
        (
            "batch_get(1,000)",
            per_call(store_batch, 50, args.rounds),
            per_call(dict_batch, 50, args.rounds),
        ),
    ]
    print(
        f"ProcessMemoryStore vs dict + snapshot copy; {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.machine()}, {args.objects} objects cached"
    )
    print(f"{'operation':<22} {'store µs':>10} {'floor µs':>10} {'ratio':>7}")
    for name, store_s, floor_s in rows:
        print(
            f"{name:<22} {store_s * 1e6:>10.2f} {floor_s * 1e6:>10.2f} {store_s / floor_s:>6.2f}x"
        )


if __name__ == "__main__":
    main()
