"""The suite's own checks fail the tests they are meant to fail."""

from __future__ import annotations

import pytest

from tests import threads

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
