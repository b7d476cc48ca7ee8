"""``xenhil lab check|status|health|quarantine|unquarantine|up|down``."""
from __future__ import annotations

import argparse

from xenhil.harness.cli.common import add_lab_options
from xenhil.harness.run_config import LAB_OPTIONS


def _check(args: argparse.Namespace) -> int:
    from xenhil.harness.cli.lab_check import check_command
    return check_command(args)


def _status(args: argparse.Namespace) -> int:
    from xenhil.harness.cli.lab_status import status_command
    return status_command(args)


def _health(args: argparse.Namespace) -> int:
    from xenhil.harness.cli.lab_health import health_command
    return health_command(args)


def _quarantine(args: argparse.Namespace) -> int:
    from xenhil.harness.cli.lab_health import quarantine_command
    return quarantine_command(args)


def _unquarantine(args: argparse.Namespace) -> int:
    from xenhil.harness.cli.lab_health import unquarantine_command
    return unquarantine_command(args)


def _up(args: argparse.Namespace) -> int:
    from xenhil.harness.lab.virtual.cli import up_command
    return up_command(args)


def _down(args: argparse.Namespace) -> int:
    from xenhil.harness.lab.virtual.cli import down_command
    return down_command(args)


def register(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser("lab", help="check, inspect, start or stop a lab")
    verbs = lab.add_subparsers(dest="lab_verb", required=True, metavar="ACTION")

    check = verbs.add_parser("check", help="validate an inventory (exit 0 valid, 2 invalid)")
    check.add_argument("file", nargs="?", help="inventory YAML (default: --lab / $XENHIL_LAB)")
    check.add_argument("--lab", **{**LAB_OPTIONS["--lab"], "help": argparse.SUPPRESS})
    check.add_argument("--learn", action="store_true",
                       help="fetch host keys of hosts without a pinned key (trust on first use, "
                            "logged) and print the lines to pin them")
    check.set_defaults(func=_check)

    status = verbs.add_parser("status", help="hosts, leases, holders, expiry and quarantines")
    add_lab_options(status)
    status.set_defaults(func=_status)

    from xenhil.harness.cli.lab_health import add_health_arguments, add_quarantine_arguments

    health = verbs.add_parser("health", help="health-check hosts: a failing one is quarantined, "
                                             "a passing one returns (exit 1 when a host failed)")
    add_health_arguments(health)
    health.set_defaults(func=_health)

    quarantine = verbs.add_parser("quarantine", help="take a host out of the pool by hand (logged)")
    add_quarantine_arguments(quarantine)
    quarantine.set_defaults(func=_quarantine)

    unquarantine = verbs.add_parser("unquarantine",
                                    help="return a quarantined host without a health check (logged)")
    add_quarantine_arguments(unquarantine)
    unquarantine.set_defaults(func=_unquarantine)

    from xenhil.harness.lab.virtual.cli import add_down_arguments, add_up_arguments

    up = verbs.add_parser("up", help="start virtual hosts (real Xen under QEMU) and write their inventory")
    add_up_arguments(up)
    up.set_defaults(func=_up)

    down = verbs.add_parser("down", help="stop the virtual hosts, leave no process behind")
    add_down_arguments(down)
    down.set_defaults(func=_down)
