"""What a host is, for the layers that drive it: real hardware, or the
virtual lab's emulated machine and the settings that follow from being one.

The Xen layer, the guest layer, the fixtures, the suites and the time
budgets ask a host's profile (:attr:`HostSpec.profile
<xenhil.harness.lab.model.HostSpec.profile>`) what to do differently; none of
them imports the virtual lab's quirks.  So one module decides what being
emulated changes (this one, with the reasons next to the values in
``lab/virtual/quirks.py``), and a new kind of host is a new profile rather
than an ``if emulated`` in every layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from xenhil.harness.lab.virtual import quirks


@dataclass(frozen=True)
class HostProfile:
    """A kind of host.  Frozen and hashable: hosts of one kind share what is
    computed per kind (the build they boot, for one)."""

    #: QEMU's software CPU under Xen (the inventory's ``emulated: true``).
    emulated: bool = False

    @classmethod
    def of(cls, capabilities: Mapping[str, object]) -> "HostProfile":
        """The profile of a host with these inventory capabilities."""
        return cls(emulated=quirks.is_emulated(capabilities))

    @property
    def kind(self) -> str:
        """"emulated" or "real", as reports and budgets name it."""
        return "emulated" if self.emulated else "real"

    @property
    def xen_cmdline_options(self) -> tuple[str, ...]:
        """Options the Xen command line needs on this kind of host."""
        return quirks.XEN_CMDLINE_EMULATED if self.emulated else ()

    @property
    def guest_cmdline_options(self) -> tuple[str, ...]:
        """Kernel options the test guest gets on this kind of host."""
        return quirks.GUEST_CMDLINE_EMULATED if self.emulated else ()

    @property
    def guest_xl_settings(self) -> dict[str, object]:
        """xl config settings an HVM guest needs here (a new dict: callers
        merge it into the guest's config, where a setting the test gives
        itself wins)."""
        return dict(quirks.EMULATED_GUEST_XL_SETTINGS) if self.emulated else {}

    def latency_samples(self, default: int) -> int:
        """Timed accesses per server when the user did not say."""
        return quirks.LATENCY_SAMPLES_EMULATED if self.emulated else default

    def guest_boot_timeout(self, default: float = 300.0) -> float:
        """How long a guest may take to answer on its console here."""
        return quirks.GUEST_BOOT_TIMEOUT_S if self.emulated else default

