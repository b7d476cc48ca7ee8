"""When a lost console is worth attaching again (Guest._domain_lives), over
xl list rows of the shapes xl prints."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from xenhil.harness.guest import Guest
from xenhil.harness.xen.parsers.xl_list import parse_xl_list

HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)\n"


def guest_with(state: str | None, on_reboot: str | None) -> Guest:
    guest = Guest.__new__(Guest)   # only what _domain_lives reads
    guest.name = "g1"
    guest.config = SimpleNamespace(on_reboot=on_reboot)
    row = f"g1                                           3   256     1     {state}       9.0\n"
    entries = parse_xl_list(HEADER + (row if state else ""))
    guest.xl = SimpleNamespace(domain=lambda name: next((e for e in entries if e.name == name), None))
    return guest


@pytest.mark.parametrize("state, on_reboot, lives", [
    ("-b----", "preserve", True),     # running: attach again
    (None, None, False),              # gone
    ("---sc-", None, False),          # crashed (on_crash decides; never restarted here)
    ("---sr-", "preserve", False),    # triple fault kept for the evidence (the suites' guests)
    ("---sr-", None, True),           # xl restarts it under the same name (the smoke's guest)
    ("---s--", None, False),          # powered off
])
def test_which_domains_get_their_console_attached_again(state, on_reboot, lives):
    assert guest_with(state, on_reboot)._domain_lives() is lives
