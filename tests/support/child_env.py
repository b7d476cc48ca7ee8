"""The environment for a pytest, benchmark or ``xenhil`` run that a test
starts as a child process: this process's own, minus what would make the
child part of the run that started it."""
from __future__ import annotations

import os

#: XENHIL_LAB would point the child at the developer's lab instead of the
#: test's; PYTEST_ADDOPTS carries the outer run's options (-n, -p, -m);
#: PYTEST_XDIST_WORKER would make the child's plugin act as one of the outer
#: run's xdist workers (its lease holder name, its guest pool's records).
OUTER_RUN_VARIABLES = ("XENHIL_LAB", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER")


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment without :data:`OUTER_RUN_VARIABLES`, with
    ``extra`` added."""
    env = {k: v for k, v in os.environ.items() if k not in OUTER_RUN_VARIABLES}
    env.update(extra)
    return env
