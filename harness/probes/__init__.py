"""Guest-side probe programs shipped as package data.

``xhprobe.c`` is built on the machine that prepares the guest kit
(``gcc -static``) and put into the guest's initramfs; its output is parsed by
``harness.xen.parsers.probe_output``.
"""
from __future__ import annotations

import shutil
import subprocess
from importlib import resources
from pathlib import Path

from xenhil.harness.errors import ConfigError, InfrastructureError
from xenhil.harness.step import step


def xhprobe_source() -> Path:
    """Path of xhprobe.c inside the installed package."""
    return Path(str(resources.files(__name__).joinpath("xhprobe.c")))


@step("build guest probe xhprobe into {dest}")
def build_xhprobe(dest: Path, cc: str = "gcc") -> Path:
    """Compile xhprobe.c into the static binary *dest* (x86-64 Linux guests).

    Raises ConfigError when the compiler is missing and InfrastructureError
    when the build fails (e.g. no static libc: install libc6-dev)."""
    compiler = shutil.which(cc)
    if compiler is None:
        raise ConfigError(f"C compiler {cc!r} not found; it is needed to build the guest probe xhprobe",
                          help="install gcc and libc6-dev (Debian: apt-get install gcc libc6-dev)")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    cmd = [compiler, "-static", "-O2", "-Wall", "-o", str(dest), str(xhprobe_source())]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise InfrastructureError(
            f"building xhprobe failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}",
            help="a static build needs the static C library: apt-get install libc6-dev")
    return dest
