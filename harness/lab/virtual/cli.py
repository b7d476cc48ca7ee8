"""``xenhil lab up --virtual N`` and ``xenhil lab down`` (wired by harness.cli.lab).

Both take the parsed arguments and return an exit status:

- ``up_command(args)``: ``args.virtual`` (host count), optional
  ``args.state_dir`` and ``args.inventory`` (default ``lab/virtual/state`` and
  ``lab/virtual.yaml``), ``args.no_wait``, ``args.address_base``.
- ``down_command(args)``: optional ``args.state_dir``.
"""
from __future__ import annotations

import argparse

from xenhil.harness.lab.virtual import launcher


def add_up_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--virtual", type=int, metavar="N", required=True,
                        help="start N emulated Xen hosts on this machine (QEMU TCG)")
    parser.add_argument("--state-dir", default=None,
                        help="where pids, disks and serial logs go (default lab/virtual/state)")
    parser.add_argument("--inventory", default=None,
                        help="inventory to write (default lab/virtual.yaml)")
    parser.add_argument("--no-wait", action="store_true",
                        help="return once QEMU runs, without waiting for dom0 SSH")
    parser.add_argument("--address-base", type=int, default=launcher.ADDRESS_BASE, metavar="B",
                        help=f"host K listens on 127.0.0.(B+K) (default {launcher.ADDRESS_BASE}); "
                             "another base lets a second lab run beside the first")


def add_down_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", default=None,
                        help="the state directory given to `lab up` (default lab/virtual/state)")


def up_command(args: argparse.Namespace) -> int:
    hosts = launcher.up(args.virtual, getattr(args, "state_dir", None),
                        inventory=getattr(args, "inventory", None),
                        wait=not getattr(args, "no_wait", False),
                        address_base=getattr(args, "address_base", launcher.ADDRESS_BASE))
    inventory = getattr(args, "inventory", None) or launcher.default_inventory_path()
    for h in hosts:
        print(f"{h.name}: ssh root@{h.address} -p {h.ssh_port}   serial {h.address}:{h.serial_port}"
              f"   bmc {h.address}:{h.bmc_port}   log {h.serial_log}")
    print(f"inventory: {inventory}   (pytest --lab {inventory}; `xenhil lab down` stops the lab)")
    return 0


def down_command(args: argparse.Namespace) -> int:
    count = launcher.down(getattr(args, "state_dir", None))
    print(f"stopped {count} virtual host(s)")
    return 0
