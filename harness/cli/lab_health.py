"""``xenhil lab health [HOST...]``, ``xenhil lab quarantine HOST`` and
``xenhil lab unquarantine HOST``: a host's health check and its quarantine
(harness.lab.health, harness.lab.leases).

``lab health`` leases each host (a quarantined one too), runs its health
check, prints every step's result, and records the outcome: a failing host
is quarantined (claims skip it), a passing one returns from quarantine.
Exit 1 when a host failed or could not be checked.  ``quarantine`` and
``unquarantine`` do it by hand, logged with your name and the reason.
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from xenhil.harness.cli.common import add_lab_options, load_lab, open_lab
from xenhil.harness.options import argparse_number, argparse_type, reason

INTERACTIVE_RUN = "interactive"


def add_health_arguments(parser: argparse.ArgumentParser) -> None:
    add_lab_options(parser)
    parser.add_argument("hosts", nargs="*", metavar="HOST",
                        help="hosts to check (default: every host of the inventory)")
    parser.add_argument("--quarantined", action="store_true",
                        help="check the quarantined hosts (with HOST: those of them)")
    parser.add_argument("--timeout", type=argparse_number("--timeout"), default=600.0,
                        metavar="SEC", help="how long to wait for a host someone holds (default 600)")
    parser.add_argument("--boot-timeout", type=argparse_number("--boot-timeout"), default=None,
                        metavar="SEC",
                        help="power cycle to dom0's SSH (default: the host's 'dom0 boot' budget, "
                             "harness/budgets.py)")
    parser.add_argument("--artifacts", default="artifacts", metavar="DIR",
                        help="folder for the reports and console transcripts (default artifacts/)")


def add_quarantine_arguments(parser: argparse.ArgumentParser) -> None:
    add_lab_options(parser)
    parser.add_argument("host", metavar="HOST")
    parser.add_argument("--reason", required=True, metavar="TEXT", type=argparse_type(reason, "--reason"),
                        help="why (logged with your name and the time)")


def health_command(args: argparse.Namespace) -> int:
    from xenhil.harness.errors import ConfigError, XenhilError
    from xenhil.harness.lab.health import check_host
    from xenhil.harness.lab.leases import Holder, format_time

    from xenhil.harness.options import check_output_folder
    inventory = load_lab(args)
    for name in args.hosts:
        inventory.host(name)             # an unknown name, before anything is touched
    check_output_folder("--artifacts", args.artifacts)
    pool = open_lab(args, ttl=120.0, inventory=inventory).pool
    names = list(args.hosts) or list(inventory.hosts)
    if args.quarantined:
        quarantined = pool.store.quarantined()
        names = [n for n in names if n in quarantined]
        if not names:
            print("no quarantined host to check")
            return 0
    me = Holder.current(run_id=INTERACTIVE_RUN, worker="main")
    folder = Path(args.artifacts) / ("health-" + datetime.datetime.now().strftime("%Y%m%dT%H%M%S"))
    failed = []
    for name in names:
        print(f"{name}: health check ...", flush=True)
        try:
            report = check_host(pool, name, me, folder, boot_timeout=args.boot_timeout,
                                claim_timeout=args.timeout)
        except ConfigError:
            raise
        except XenhilError as exc:       # could not lease it (held, store down): not checked
            print(f"{name}: NOT CHECKED: {str(exc).splitlines()[0]}")
            failed.append(name)
            continue
        q = report.quarantine
        if report.passed:
            after = (f"released from quarantine (quarantined since {format_time(q.since)}: "
                     f"{q.reason})" if q is not None else "not quarantined")
            print(f"{name}: health check PASSED; {after}")
        else:
            failed.append(name)
            print(f"{name}: health check FAILED; quarantined since {format_time(q.since)}: "
                  f"claims skip it until a health check passes")
        for line in report.lines():
            print(line)
    sys.stdout.flush()
    if failed:
        print(f"{len(failed)} of {len(names)} hosts failed or were not checked: {', '.join(failed)}")
        return 1
    print(f"{len(names)} host{'s' if len(names) != 1 else ''} healthy")
    return 0


def _pool_and_person(args: argparse.Namespace):
    """The lab's pool (the host checked against the inventory first) and the
    person at the keyboard, for the by-hand quarantine commands."""
    from xenhil.harness.lab.leases import Holder

    inventory = load_lab(args)
    inventory.host(args.host)
    me = Holder.current(run_id=INTERACTIVE_RUN, worker="main")
    return open_lab(args, inventory=inventory, holder=me).pool, me


def quarantine_command(args: argparse.Namespace) -> int:
    pool, me = _pool_and_person(args)
    q = pool.quarantine_host(args.host, args.reason, by=me)
    print(f"quarantined {args.host} (by {me.person}): {q.reason}")
    print(f"it returns after a passing `xenhil lab health {args.host}`, or "
          f"`xenhil lab unquarantine {args.host} --reason TEXT`")
    return 0


def unquarantine_command(args: argparse.Namespace) -> int:
    from xenhil.harness.lab.leases import format_time

    pool, me = _pool_and_person(args)
    q = pool.unquarantine_host(args.host, args.reason, by=me)
    if q is None:
        print(f"{args.host} was not quarantined; nothing to do")
        return 0
    print(f"released {args.host} from quarantine WITHOUT a health check (by {me.person}, "
          f"logged in {pool.store.url}): {args.reason.strip()}")
    print(f"  it was quarantined since {format_time(q.since)} by {q.by}: {q.reason}")
    return 0
