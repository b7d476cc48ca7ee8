"""Checks of Xen/QEMU behaviour: pure functions over parsed data (plus a few
orchestration functions taking a Guest), no pytest.  Every failure is a
``CheckFailed`` (a ProductError) whose message states what was expected,
what was seen, and where the evidence is.

- ``topology``: the PCI layout the guest must see, from the split and the
  running device-model command lines
- ``pci``: the guest's PCI views, BDF ownership, the Xen platform device
- ``routing``: per-class I/O reaches its owner only; rangesets vs needs
- ``mapcache``: invalidates after memory removal; data integrity
- ``saverestore``: save file records; the OSSTest-style cycle
- ``latency``: per-server round-trip rows against the Xen-internal baseline
"""
from xenhil.harness.checks.failure import CheckFailed, Mismatch

__all__ = ["CheckFailed", "Mismatch"]
