"""``xenhil power HOST status|on|off|cycle``."""
from __future__ import annotations

import argparse
from pathlib import Path

from xenhil.harness.cli.common import add_lab_options, load_lab


def _power(args: argparse.Namespace) -> int:
    from xenhil.harness.host import Host

    from xenhil.harness.errors import ConfigError
    spec = load_lab(args).host(args.host)
    from xenhil.harness.access.power import power_driver_class, power_kinds
    if not power_driver_class(spec.power.kind).can_power:
        # The inventory says so: nothing to try, nothing to make.
        others = [k for k in power_kinds() if power_driver_class(k).can_power]
        raise ConfigError(f"{spec.name} has no power control "
                          f"(hosts[{spec.name}].power.kind {spec.power.kind})",
                          help=f"power it by hand, or add a power section (kind "
                               f"{', '.join(others)}) to the inventory")
    if spec.power.password is not None:
        spec.power.password.resolve()        # an unusable reference fails before anything is made
    driver = Host(spec, Path("artifacts/cli")).power
    if args.action == "status":
        print(f"{spec.name}: {driver.status()}")
    else:
        getattr(driver, args.action)()
        print(f"{spec.name}: {args.action} done")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    power = sub.add_parser("power", help="power control through the host's BMC or fallback")
    add_lab_options(power)
    power.add_argument("host")
    power.add_argument("action", choices=["status", "on", "off", "cycle"])
    power.set_defaults(func=_power)
