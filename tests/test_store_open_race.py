"""Several processes opening a fresh SQLite store at the same moment (pytest
-n 2 workers and the controller do, on a new lab): each must get it.
Switching a new file to WAL used to fail at once with "database is locked"
for the losers (seen in CI; about 1 open in 11 with 6 processes)."""
from __future__ import annotations

from tests.support.at_once import errors_of_processes_at_once
from tests.support.store_open import open_both_stores

PROCESSES = 6
ROUNDS = 5


def test_processes_opening_new_stores_at_once_all_succeed(tmp_path):
    errors = []
    for round_no in range(ROUNDS):
        directory = tmp_path / f"round{round_no}"
        directory.mkdir()
        errors += errors_of_processes_at_once(open_both_stores,
                                              [(str(directory),)] * PROCESSES)
    assert errors == []
