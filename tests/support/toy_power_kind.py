"""A toy power kind, test material for issue 16's "a new power kind is one
new file plus its registration": ``local-process`` powers a "host" that is a
local process (on: start ``command``; off: kill it; status: its pid file
names a live process).  Everything the kind needs is in this file: its
inventory fields, their fixes, its driver.  Registered by importing it (the
tests do it in a throwaway registry; a real kind adds its import line to
harness/access/power/__init__.py).
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
from pathlib import Path

from xenhil.harness.access.power.driver import OFF, ON, PowerDriver, register_power_driver


@register_power_driver
class LocalProcessPower(PowerDriver):
    kind = "local-process"
    fields = {
        "command": {"type": "string", "minLength": 1,
                    "x-fix": "give the command line that runs the host, e.g. command: sleep 1000"},
        "pidfile": {"$ref": "#/$defs/path"},
    }
    required = ("command", "pidfile")
    summary = "local-process (with command, pidfile)"
    fix = "power kind local-process needs command: and pidfile:"
    reports_off = True
    settle_timeout = 5.0
    settle_poll = 0.1

    @classmethod
    def for_host(cls, host, ssh_factory):
        return cls(host.name, host.power.options["command"], Path(host.power.options["pidfile"]))

    def __init__(self, host_name: str, command: str, pidfile: Path):
        super().__init__(host_name)
        self.argv, self.pidfile = shlex.split(command), pidfile

    def _pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        stat = Path(f"/proc/{pid}/stat").read_text()
        return None if stat[stat.rfind(")") + 2] == "Z" else pid

    def _status(self) -> str:
        return ON if self._pid() else OFF

    def _on(self) -> None:
        if self._pid() is None:
            process = subprocess.Popen(self.argv, start_new_session=True,
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            self.pidfile.write_text(str(process.pid))

    def _off(self) -> None:
        pid = self._pid()
        if pid is not None:
            os.killpg(pid, signal.SIGKILL)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass

    def _cycle(self) -> None:
        self._off()
        self._on()
