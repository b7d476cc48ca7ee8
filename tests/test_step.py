"""Steps (harness.step) outside any test: the end of a run destroys its
guests in one thread per host, after the last test ended."""
from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

CONFTEST = '''
import threading

from xenhil.harness.step import step_context

done = []


def pytest_sessionfinish(session):
    def destroy_guests():
        with step_context("destroy the run's guests on h1"):
            done.append(True)
    worker = threading.Thread(target=destroy_guests)
    worker.start()
    worker.join()
    print("guests destroyed:", done)
'''


def test_a_step_in_a_thread_after_the_last_test_runs_and_is_logged(pytester: pytest.Pytester):
    """allure-python-commons raised StopIteration for such a step (main job
    2026-12-02: "RuntimeError: generator raised StopIteration" after both
    tests passed, exit 1); the step must run all the same."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile("def test_one():\n    assert True\n")
    result = pytester.runpytest_subprocess("-s", f"--alluredir={pytester.path / 'allure'}")
    result.stdout.fnmatch_lines(["*guests destroyed: ?True?*", "*1 passed*"])
    assert result.ret == 0, result.stderr.str()
