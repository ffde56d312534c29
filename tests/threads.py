"""The suite's check that no test leaves a thread running (an autouse fixture that the root
conftest.py imports, so that tests/test_suite_checks.py can show it failing a test)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

# How long a thread a test started may take to end once the test is over: far more than a
# closed store's threads need (they wake every 0.1 s at most), so only a leak fails.
THREAD_GRACE = 10.0


@pytest.fixture(autouse=True)
def no_thread_outlives_its_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves a thread running: a store it did not close, a worker it
    did not join.  Such threads log into later tests and keep their servers busy."""
    before = set(threading.enumerate())
    yield  # autouse: set up first, so torn down after every other fixture of the test
    deadline = time.monotonic() + THREAD_GRACE
    # Until none is left: a thread may start another as it ends (a catch-up retry timer).
    while alive := [t for t in threading.enumerate() if t not in before and t.is_alive()]:
        if time.monotonic() >= deadline:
            break
        alive[0].join(max(0.0, deadline - time.monotonic()))
    if alive:
        names = ", ".join(sorted(thread.name for thread in alive))
        pytest.fail(
            f"{request.node.nodeid} left {len(alive)} thread(s) running: {names}",
            pytrace=False,
        )
