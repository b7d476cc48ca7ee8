"""Child-process body for tests/test_store_open_race.py (module-level, so
``spawn`` can import it)."""
from __future__ import annotations


def open_both_stores(directory: str, barrier, results) -> None:
    """Open a lease store and a results store in ``directory`` the moment
    every sibling is ready; put None, or the error's text."""
    from xenhil.harness.lab.lease_sqlite import SQLiteLeaseStore
    from xenhil.harness.results.store import ResultsStore
    barrier.wait()
    try:
        SQLiteLeaseStore(f"{directory}/leases.sqlite")
        ResultsStore(f"sqlite://{directory}/results.sqlite").close()
        results.put(None)
    except Exception as exc:  # reported to the parent, which asserts on it
        results.put(f"{type(exc).__name__}: {exc}")
