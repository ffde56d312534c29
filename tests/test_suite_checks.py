"""The suite's own checks fail the tests they are meant to fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import threads
from tests.servers import ServerError, free_port
from tests.suite_servers import suite_redis, take_slot

ROOT = Path(__file__).resolve().parents[1]

LEAKY = """
import threading
import time


# The clean test first: a leaked thread runs on into the tests after it.
def test_joins_its_worker():
    worker = threading.Thread(target=time.sleep, args=(0.2,))
    worker.start()
    worker.join()


def test_forgets_a_worker():
    threading.Thread(target=time.sleep, args=(1.5,), name="forgotten").start()


def test_leaves_a_thread_that_starts_another_as_it_ends():
    def relay(hops):
        time.sleep(0.3)
        if hops:
            threading.Thread(target=relay, args=(hops - 1,), name="relay").start()

    threading.Thread(target=relay, args=(4,), name="relay").start()
"""


def test_a_thread_that_outlives_its_test_fails_that_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(threads, "THREAD_GRACE", 0.6)
    pytester.makeconftest("from tests.threads import no_thread_outlives_its_test\n")
    pytester.makepyfile(test_leaky=LEAKY)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*test_forgets_a_worker left 1 thread(s) running: forgotten*",
            "*_starts_another_as_it_ends left * running: relay*",  # one, or two mid-relay
        ]
    )


RAISING_WORKERS = """
import gc
import threading

from tests.threads import started


def test_a_plain_thread_raises():
    def fail():
        assert 1 == 2, "lost in a thread"

    thread = threading.Thread(target=fail)
    thread.start()
    thread.join()


def test_a_worker_raises():
    def fail():
        raise ValueError("raised in a worker")

    started(fail).finish()


def test_a_worker_never_ends():
    started(threading.Event().wait, 5).finish(0.2)


def test_an_exception_nobody_can_raise():
    class Broken:
        def __del__(self):
            raise RuntimeError("raised in __del__")

    Broken()
    gc.collect()


def test_a_worker_that_ends_well():
    started(sum, [1, 2]).finish()
"""


def test_an_exception_in_a_worker_thread_fails_its_test(pytester: pytest.Pytester) -> None:
    # The suite's own configuration, not a copy: its filterwarnings make pytest's warnings
    # for a thread's exception and an unraisable one into errors.
    pytester.makepyprojecttoml((ROOT / "pyproject.toml").read_text())
    pytester.makepyfile(test_workers=RAISING_WORKERS)
    pytester.syspathinsert(ROOT)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "test_workers.py")
    result.assert_outcomes(passed=1, failed=4)
    result.stdout.fnmatch_lines_random(
        [
            "*PytestUnhandledThreadExceptionWarning: Exception in thread*(fail)*",
            "*AssertionError: lost in a thread*",
            "*ValueError: raised in a worker*",
            "*worker * still running after 0.2 s*",
            "*Exception ignored in*test_an_exception_nobody_can_raise*Broken.__del__*",
        ]
    )


def test_sessions_running_at_once_take_different_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKPYLE_TEST_SLOTS", "2")
    monkeypatch.setenv("STOCKPYLE_TEST_REDIS_PORT", str(free_port()))  # locks of their own
    first, first_lock = take_slot()
    second, second_lock = take_slot()
    assert first_lock is not None
    assert second_lock is not None
    try:
        assert (first, second) == (0, 1)
        with pytest.raises(ServerError, match="all 2 slots are taken"):
            take_slot()
        assert suite_redis(1).port == suite_redis(0).port + 10
        first_lock.close()  # that session ended
        again, again_lock = take_slot()
        assert again == 0
        assert again_lock is not None
        again_lock.close()
    finally:
        second_lock.close()
