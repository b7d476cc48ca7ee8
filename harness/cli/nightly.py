"""``xenhil nightly CONFIG``: the scheduled run of every build of a nightly
configuration against its lab (harness.nightly), and the systemd units
that start it every night.

Exit status: 0 every build passed; 1 a build failed (its tests, its report
or its secret scan); 2 a bad configuration, every problem named with its
fix before anything runs; 130 stopped (SIGTERM, Ctrl-C).
"""
from __future__ import annotations

import argparse
import datetime
import getpass
import os
from pathlib import Path


def _say(text: str) -> None:
    from xenhil.harness.secrets import scrub
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(scrub(f"{stamp} nightly: {text}"), flush=True)


def _nightly(args: argparse.Namespace) -> int:
    from xenhil.harness.nightly.config import load_nightly_config
    from xenhil.harness.nightly.runner import check_before_running, run_night

    config = load_nightly_config(args.config)
    if args.install_units:
        return _install(config.path, args)
    if args.check:
        check_before_running(config)
        print(f"{config.path}: {len(config.builds)} build(s) "
              f"({', '.join(b.name for b in config.builds)}) against {config.lab}; reports in "
              f"{config.reports}, the last {config.keep} nights kept")
        return 0
    return run_night(config, _say)


def _install(config: Path, args: argparse.Namespace) -> int:
    from xenhil.harness.nightly.units import SERVICE, TIMER, install_units, reload_systemd
    unit_dir = Path(args.unit_dir)
    user = args.user or os.environ.get("SUDO_USER") or getpass.getuser()
    for path in install_units(config, unit_dir, user):
        print(f"installed {path}")
    done = reload_systemd(unit_dir)
    if done:
        print(f"ran {done}")
    print(f"next: systemctl enable --now {TIMER}   (then `systemctl list-timers {TIMER}`; "
          f"`journalctl -u {SERVICE}` shows each night)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from xenhil.harness.nightly.units import SYSTEM_UNIT_DIR
    nightly = sub.add_parser("nightly", help="run every build of a nightly configuration "
                             "against its lab, with Allure history and retention")
    nightly.add_argument("config", metavar="CONFIG", help="the nightly configuration (YAML)")
    nightly.add_argument("--check", action="store_true",
                         help="check the configuration, the inventory's secrets and Allure; "
                              "run nothing")
    nightly.add_argument("--install-units", action="store_true",
                         help="install the systemd service and timer (lab/systemd/) for this "
                              "checkout and CONFIG, with a drop-in naming them and the user")
    nightly.add_argument("--unit-dir", default=str(SYSTEM_UNIT_DIR),
                         help=f"where --install-units writes (default {SYSTEM_UNIT_DIR})")
    nightly.add_argument("--user", default=None,
                         help="the user the service runs as (default: $SUDO_USER, else you)")
    nightly.set_defaults(func=_nightly)
