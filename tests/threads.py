"""The suite's check that no test leaves a thread running (an autouse fixture that the root
conftest.py imports, so that tests/test_suite_checks.py can show it failing a test)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator

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


# How long a test waits for a worker it started to end: a hang guard, never a timing bound.
JOIN_TIMEOUT = 60.0


class Worker(threading.Thread):
    """A test's worker thread whose exception, or failure to end, fails the test.

    A plain thread's exception only prints (and pytest's warning for it is an error in this
    suite's configuration, ``pyproject.toml``); a worker's is raised again by :meth:`finish`
    in the test's own thread, with its traceback, where the test reports it."""

    def __init__(self, target: Callable[..., object], *args: object, name: str | None = None):
        super().__init__(target=target, args=args, name=name, daemon=True)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            super().run()
        except BaseException as exc:  # raised again by finish(), in the test's thread
            self.error = exc

    def finish(self, timeout: float = JOIN_TIMEOUT) -> None:
        """Wait for the worker to end; raise what it raised, or fail if it is still running."""
        self.join(timeout)
        if self.is_alive():
            pytest.fail(f"worker {self.name} still running after {timeout} s", pytrace=False)
        if self.error is not None:
            raise self.error


def started(target: Callable[..., object], *args: object, name: str | None = None) -> Worker:
    """A :class:`Worker` running ``target(*args)``, already started."""
    worker = Worker(target, *args, name=name)
    worker.start()
    return worker


def finish_all(workers: Iterable[Worker], timeout: float = JOIN_TIMEOUT) -> None:
    """Wait for every worker, then raise the first one's exception (every one is joined
    first, so none is left running into the next test)."""
    workers = list(workers)
    deadline = time.monotonic() + timeout
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
    for worker in workers:
        worker.finish(0)


def run_together(targets: Iterable[Callable[[], object]], timeout: float = JOIN_TIMEOUT) -> None:
    """Run each target in its own worker at once, and finish them all."""
    finish_all([started(target) for target in targets], timeout)
