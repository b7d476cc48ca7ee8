"""Start processes that do one thing at the same moment (a barrier), and
collect what each reported: the stores' "first open by several processes"
tests.  Each target is module-level (``spawn`` imports it) and takes its own
arguments, then the barrier and a queue, and puts None or its error's text."""
from __future__ import annotations

import multiprocessing
from typing import Callable, Sequence

SPAWN = multiprocessing.get_context("spawn")


def errors_of_processes_at_once(target: Callable, each_args: Sequence[tuple],
                                timeout: float = 120.0) -> list[str]:
    """Run ``target(*args, barrier, queue)`` for every ``args`` in one
    process each; the errors they reported (empty when all succeeded).
    Every process is gone on return (joined, killed when stuck)."""
    barrier, results = SPAWN.Barrier(len(each_args)), SPAWN.Queue()
    children = [SPAWN.Process(target=target, args=(*args, barrier, results), daemon=True)
                for args in each_args]
    for child in children:
        child.start()
    try:
        return [e for e in (results.get(timeout=timeout) for _ in children) if e]
    finally:
        for child in children:
            child.join(30)
            if child.is_alive():
                child.kill()
