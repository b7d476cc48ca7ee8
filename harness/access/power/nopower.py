"""Power kind ``none``: a host without power control."""
from __future__ import annotations

from typing import Callable

from xenhil.harness.access.power.driver import PowerDriver, SSHRunner, register_power_driver
from xenhil.harness.errors import PowerError
from xenhil.harness.lab.model import HostSpec

@register_power_driver
class NoPower(PowerDriver):
    """A host without power control: every action fails with advice."""

    kind = "none"
    summary = "none"
    can_power = False

    @classmethod
    def for_host(cls, host: HostSpec, ssh_factory: Callable[[], SSHRunner] | None) -> "NoPower":
        return cls(host.name)

    def _fail(self, action: str):
        raise PowerError(f"power {action} of {self.host_name}: host has no power control",
                         help="power-cycle it by hand or add a power section")

    def _status(self) -> str:
        self._fail("status")

    def _on(self) -> None:
        self._fail("on")

    def _off(self) -> None:
        self._fail("off")

    def _cycle(self) -> None:
        self._fail("cycle")
