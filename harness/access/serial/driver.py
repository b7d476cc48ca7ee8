"""What every serial console kind shares: the base class a kind's driver
derives from, and the registry the inventory schema's ``serial`` section is
made from (harness.access.kinds).  A kind's driver is a module of this
package whose class registers itself with :func:`register_serial_driver`:
it declares its inventory fields, reads its section into a
:class:`~harness.lab.model.SerialConfig`, builds the
:class:`~harness.access.console.Console` that carries it, and names what two
hosts must not share (their console's endpoint)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar

from xenhil.harness.access.kinds import KindRegistry
from xenhil.harness.lab.model import HostSpec, SerialConfig

#: ((field path under the host), message, fix) of one inventory problem.
HostProblem = tuple[tuple[str, ...], str, str]


class SerialDriver:
    """One kind of serial console.  Class attributes as harness.access.kinds
    describes; the class methods below are what a kind may refine."""

    kind: ClassVar[str] = "abstract"
    fields: ClassVar[dict[str, dict]] = {}
    required: ClassVar[tuple[str, ...]] = ()
    summary: ClassVar[str | None] = ""
    fix: ClassVar[str] = ""
    unused_field_hint: ClassVar[str] = ""

    @classmethod
    def config(cls, section: dict, power: dict, credential: Callable[[Any], Any]) -> SerialConfig:
        """The inventory's (valid) serial section as a SerialConfig;
        ``credential`` turns a credential reference into a CredentialRef."""
        return SerialConfig(kind=section["kind"], host=section.get("host"),
                            port=section.get("port"), command=section.get("command"))

    @classmethod
    def console(cls, host: HostSpec, transcript: Path, **kw):
        """The (closed) Console of ``host``, writing ``transcript``."""
        raise NotImplementedError(f"serial kind {cls.kind} builds no console")

    @classmethod
    def host_problems(cls, section: dict, power: Any) -> list[HostProblem]:
        """What the schema cannot say about a host with this console (the
        host's power section given as the inventory has it)."""
        return []

    @classmethod
    def endpoint(cls, section: dict, power: Any) -> tuple[tuple, str, tuple[str, ...]] | None:
        """(identity, how it is shown, field) of what this console reaches:
        two hosts with one identity share a console, which the inventory
        refuses.  None when the section does not say enough."""
        return None

    @classmethod
    def command_lines(cls, section: dict) -> list[tuple[tuple[str, ...], str]]:
        """(field path under serial, command line) of the local command lines
        the section holds: the inventory check looks for inline passwords."""
        return []


#: The serial drivers by kind.
SERIAL_KINDS: KindRegistry[type[SerialDriver]] = KindRegistry("serial")
register_serial_driver = SERIAL_KINDS.register
