"""Several processes opening a fresh SQLite store at the same moment (pytest
-n 2 workers and the controller do, on a new lab): each must get it.
Switching a new file to WAL used to fail at once with "database is locked"
for the losers (seen in CI; about 1 open in 11 with 6 processes)."""
from __future__ import annotations

import multiprocessing

from tests.support.store_open import open_both_stores

CTX = multiprocessing.get_context("spawn")
PROCESSES = 6
ROUNDS = 5


def test_processes_opening_new_stores_at_once_all_succeed(tmp_path):
    errors = []
    for round_no in range(ROUNDS):
        directory = tmp_path / f"round{round_no}"
        directory.mkdir()
        barrier, results = CTX.Barrier(PROCESSES), CTX.Queue()
        children = [CTX.Process(target=open_both_stores, args=(str(directory), barrier, results),
                                daemon=True) for _ in range(PROCESSES)]
        for child in children:
            child.start()
        try:
            errors += [e for e in (results.get(timeout=120) for _ in children) if e]
        finally:
            for child in children:
                child.join(30)
                if child.is_alive():
                    child.kill()
    assert errors == []
