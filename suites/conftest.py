"""Every suite test boots real Xen guests: mark them so the framework's own
fast runs can deselect them (-m 'not real_xen')."""
import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/suites/" in f"/{item.nodeid}":
            item.add_marker(pytest.mark.real_xen)
