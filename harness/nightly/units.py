"""The systemd service and timer of the nightly run (``lab/systemd/``),
installed for this checkout.

The unit files are installed as shipped, so what runs is what the
repository says; what differs per machine (the checkout, the
configuration, the user) goes into a drop-in,
``xenhil-nightly.service.d/xenhil.conf``, systemd's own place for local
settings.  Nothing is written before the configuration, the user and
every path have been checked.
"""
from __future__ import annotations

import datetime
import os
import pwd
import re
import subprocess
import sys
from pathlib import Path

from xenhil.harness.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
SHIPPED = PROJECT_ROOT / "lab" / "systemd"
SERVICE, TIMER = "xenhil-nightly.service", "xenhil-nightly.timer"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")

#: Paths written into ExecStart= unquoted: systemd expands '%' specifiers
#: and '$' variables and splits at blanks, so only these characters pass.
SAFE_PATH = re.compile(r"/[A-Za-z0-9_./+,:@=-]*")

DROP_IN = """\
# Written by `xenhil nightly {config} --install-units` on {date}:
# this machine's checkout, nightly configuration and user.
[Unit]
Documentation=file:{checkout}/README.md

[Service]
User={user}
WorkingDirectory={checkout}
ExecStart=
ExecStart={xenhil} nightly {config}
"""


def xenhil_command() -> list[str]:
    """How the service starts xenhil: this environment's ``xenhil``
    script, else this interpreter with the module."""
    script = Path(sys.executable).parent / "xenhil"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "xenhil.harness.cli.main"]


def _safe(what: str, path: Path) -> str:
    text = str(path)
    if not SAFE_PATH.fullmatch(text):
        raise ConfigError(f"{what} {text!r}: holds a character systemd would read as a "
                          "specifier, a variable or a separator",
                          help=f"move it to a path of letters, digits and '/_.+,:@=-' only")
    return text


def check_user(user: str) -> str:
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"--user {user!r}: no such user on this machine",
                          help="give the user the nightly runs as (it needs the lab's "
                               "credentials and write access to the reports folder)") from None
    return user


def install_units(config: Path, unit_dir: Path, user: str) -> list[Path]:
    """The shipped units and their drop-in written into ``unit_dir``;
    the files written.  ``config``: the checked configuration file."""
    from xenhil.harness.options import check_output_folder
    check_output_folder("--unit-dir", unit_dir)
    check_user(user)
    command = [_safe("xenhil", Path(part)) if part.startswith("/") else part
               for part in xenhil_command()]
    text = DROP_IN.format(config=_safe("CONFIG", config.resolve()), checkout=_safe(
        "the checkout", PROJECT_ROOT), user=user, xenhil=" ".join(command),
        date=datetime.date.today().isoformat())
    unit_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in (SERVICE, TIMER):
        target = unit_dir / name
        target.write_text((SHIPPED / name).read_text())
        written.append(target)
    drop_in = unit_dir / f"{SERVICE}.d" / "xenhil.conf"
    drop_in.parent.mkdir(exist_ok=True)
    drop_in.write_text(text)
    written.append(drop_in)
    return written


def reload_systemd(unit_dir: Path) -> str | None:
    """``systemctl daemon-reload`` when the units went where the running
    systemd reads them (a changed drop-in is read only then); what was done."""
    if not Path("/run/systemd/system").is_dir():
        return None          # systemd is not this machine's init: nothing to tell
    if unit_dir.resolve() != SYSTEM_UNIT_DIR:
        return None
    subprocess.run(["systemctl", "daemon-reload"], check=True, timeout=120)
    return "systemctl daemon-reload"


__all__ = ["install_units", "reload_systemd", "xenhil_command", "check_user", "SERVICE", "TIMER",
           "SHIPPED", "SYSTEM_UNIT_DIR"]
