"""A stand-in for a guest's shell in the latency tests: runs the command on
this machine, with the real xhprobe in --dry-run (no port is touched; every
read is all ones).  ``host`` is what harness code reads of the guest's host
(None: a test that never asks)."""
from __future__ import annotations

import subprocess
from pathlib import Path


class LocalDryRunGuest:
    def __init__(self, probe: Path, artifacts_dir: Path, host=None):
        self.probe, self.artifacts_dir, self.name, self.host = probe, artifacts_dir, "local-dry-run", host

    def run(self, command: str, timeout: float) -> str:
        command = command.replace(f"{self.probe} time-in", f"{self.probe} --dry-run time-in")
        return subprocess.run(["sh", "-c", command], check=True, capture_output=True, text=True,
                              timeout=timeout).stdout
