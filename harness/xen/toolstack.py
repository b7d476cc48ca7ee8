"""``xl`` on a host, over its SSH connection: every call quoted, every
output parsed by harness.xen.parsers."""
from __future__ import annotations

import json
import logging
import shlex

from xenhil.harness.errors import ConnectionLost, ProductError, RemoteCommandFailed
from xenhil.harness.step import step
from xenhil.harness.xen.dom0_crashes import process_death_in_output
from xenhil.harness.xen.parsers.rangesets import parse_ioreq_rangesets
from xenhil.harness.xen.parsers.xl_info import XlInfo, parse_xl_info
from xenhil.harness.xen.parsers.xl_list import DomainEntry, parse_xl_list

log = logging.getLogger("xenhil.toolstack")

# A guest config xl must accept when it knows the series' option: dry-run
# parse only (`xl -N` creates nothing).
_PROBE_CONFIG = """name = "xenhil-capability-probe"
type = "hvm"
memory = 64
device_models = [ 'name=qa,ui,ide', 'name=qb,serial' ]
"""


class Toolstack:
    def __init__(self, ssh, host_name: str, emulated: bool = False):
        self.ssh = ssh
        self.host_name = host_name
        # An emulated host (the virtual lab) has dom0 processes die of its
        # own instability (harness.xen.dom0_crashes); on real hardware the
        # same death is the toolstack's bug and is never retried.
        self.emulated = emulated

    def xl(self, *args: str, timeout: float = 120.0, check: bool = True):
        return self.ssh.run(["xl", *args], timeout=timeout, check=check)

    def read(self, *args: str, timeout: float = 120.0):
        """A read-only xl command (info, list, dmesg), asked again once when the
        connection dropped while it ran: on the virtual lab an SSH stream has
        been seen to break right after `xl debug-keys q` (open problem), and a
        read is safe to repeat, unlike what run() may not retry by itself."""
        try:
            return self.xl(*args, timeout=timeout)
        except ConnectionLost:
            return self.xl(*args, timeout=timeout)

    def create(self, config_path: str, name: str, paused: bool = False, timeout: float = 300.0):
        """`xl create` (``-p``: paused).  Created once more, after destroying
        whatever exists under ``name`` (what xl got done is unknown), when
        - the SSH connection dropped under it (seen on the virtual lab while a
          guest's device model starts), or
        - on an emulated host, a dom0 process died under it (CI's smoke: xl's
          own child aborted on a corrupted heap, the virtual lab's known
          instability).
        A second failure is the caller's."""
        args = ["create", *(["-p"] if paused else []), config_path]
        try:
            return self.xl(*args, timeout=timeout)
        except ConnectionLost as exc:
            why = f"connection lost under `xl create` ({str(exc).splitlines()[0]})"
        except RemoteCommandFailed as exc:
            death = process_death_in_output(f"{exc.stderr_tail}\n{exc.stdout_tail}")
            if not (self.emulated and death):
                raise
            why = (f"a dom0 process died under `xl create` on this emulated host ({death}): "
                   f"the virtual lab's instability, not the product")
        log.warning("%s: %s; destroying what exists of %s and creating it again",
                    self.host_name, why, name)
        if self.domain(name) is not None:
            self.xl("destroy", name, timeout=120)
        return self.xl(*args, timeout=timeout)

    @step("xl info on {self.host_name}")
    def info(self) -> XlInfo:
        return parse_xl_info(self.read("info").stdout)

    def domains(self) -> list[DomainEntry]:
        return parse_xl_list(self.read("list").stdout)

    def domain(self, name: str) -> DomainEntry | None:
        return next((d for d in self.domains() if d.name == name), None)

    def dmesg(self, clear: bool = False) -> str:
        if clear:
            return self.xl("dmesg", "-c").stdout
        return self.read("dmesg").stdout

    @step("ioreq server rangesets on {self.host_name}")
    def rangesets_text(self) -> str:
        """`xl debug-keys q` dumps every domain's rangesets into the Xen console
        ring; clear the ring first so the parse sees exactly one dump."""
        self.dmesg(clear=True)
        self.xl("debug-keys", "q")
        return self.dmesg()

    def rangesets(self):
        return parse_ioreq_rangesets(self.rangesets_text())

    @step("probe {self.host_name}'s xl for device_models")
    def supports_device_models(self) -> bool:
        """True when xl's parser knows the series' ``device_models`` option: the
        dry-run JSON of a config carrying it then mentions it; False when xl
        printed the domain config without it (Debian's 4.17: an unknown key is
        ignored).  Anything else is no answer, and raises
        CapabilityProbeFailed (an SSH failure raises its own error): xl
        exiting non-zero or printing no domain config says nothing about the
        option, and a skip for "capability missing" would hide it."""
        from xenhil.harness.errors import CapabilityProbeFailed
        path = "/tmp/xenhil-capability-probe.cfg"
        self.ssh.put_bytes(_PROBE_CONFIG, path)
        command = f"xl -N create {shlex.quote(path)}"
        result = self.ssh.run(f"{command} 2>&1", timeout=60)
        output = result.stdout or ""
        parsed = _dry_run_json(output)
        if result.exit_status != 0 or parsed is None:
            why = (f"exited {result.exit_status}" if result.exit_status != 0
                   else "printed no domain config (JSON)")
            raise CapabilityProbeFailed(
                f"{self.host_name}: capability probe device_models: `{command}` {why}; "
                f"output (tail):\n{output[-1500:]}")
        return "device_models" in json.dumps(parsed)

    def qemu_pids(self, domid: int) -> list[int]:
        """Device-model processes serving a domain (qemu-xen started by libxl
        carries ``-xen-domid N``)."""
        result = self.ssh.run(f"pgrep -f -- {shlex.quote(f'-xen-domid {domid}( |$)')} || true",
                              timeout=30)
        return [int(p) for p in result.stdout.split()]

    def xenstore_exists(self, path: str) -> bool:
        return self.ssh.run(["xenstore-exists", path], timeout=30).exit_status == 0

    def xenstore_read(self, path: str) -> str | None:
        """The value at ``path``, None when there is none."""
        result = self.ssh.run(["xenstore-read", path], timeout=30)
        return result.stdout.strip() if result.ok else None


def _dry_run_json(output: str) -> dict | None:
    """The domain config ``xl -N create`` printed (a JSON object after xl's
    "Parsing config from ..." line), or None when there is none."""
    start = output.find("{")
    if start < 0:
        return None
    try:
        parsed, _ = json.JSONDecoder().raw_decode(output[start:])
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def require_hvm(info: XlInfo, host_name: str) -> None:
    if not info.hvm_capable:
        raise ProductError(f"{host_name}: xl info virt_caps {sorted(info.virt_caps)} has no 'hvm'",
                           help="Xen did not enable VT-x/AMD-V: check the BIOS/firmware and "
                                "`xl dmesg` for HVM/SVM/VMX messages")
