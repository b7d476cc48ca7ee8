"""``xenhil lab check|status|up|down``."""
from __future__ import annotations

import argparse

from harness.cli.common import add_lab_options


def _check(args: argparse.Namespace) -> int:
    from harness.cli.lab_check import check_command
    return check_command(args)


def _status(args: argparse.Namespace) -> int:
    from harness.cli.lab_status import status_command
    return status_command(args)


def _up(args: argparse.Namespace) -> int:
    from harness.lab.virtual.cli import up_command
    return up_command(args)


def _down(args: argparse.Namespace) -> int:
    from harness.lab.virtual.cli import down_command
    return down_command(args)


def register(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser("lab", help="check, inspect, start or stop a lab")
    verbs = lab.add_subparsers(dest="lab_verb", required=True, metavar="ACTION")

    check = verbs.add_parser("check", help="validate an inventory (exit 0 valid, 2 invalid)")
    check.add_argument("file", nargs="?", help="inventory YAML (default: --lab / $XENHIL_LAB)")
    check.add_argument("--lab", default=None, help=argparse.SUPPRESS)
    check.add_argument("--learn", action="store_true",
                       help="fetch host keys of hosts without a pinned key (trust on first use, "
                            "logged) and print the lines to pin them")
    check.set_defaults(func=_check)

    status = verbs.add_parser("status", help="hosts, leases, holders and expiry")
    add_lab_options(status)
    status.set_defaults(func=_status)

    from harness.lab.virtual.cli import add_down_arguments, add_up_arguments

    up = verbs.add_parser("up", help="start virtual hosts (real Xen under QEMU) and write their inventory")
    add_up_arguments(up)
    up.set_defaults(func=_up)

    down = verbs.add_parser("down", help="stop the virtual hosts, leave no process behind")
    add_down_arguments(down)
    down.set_defaults(func=_down)
