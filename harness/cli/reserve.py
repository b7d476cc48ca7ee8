"""``xenhil reserve`` and ``xenhil release``: leases for people at a terminal.

An interactive lease is not renewed by anything (the command exits at once),
so it gets a long TTL instead (``--ttl``, default 4 h) and the holder run id
"interactive".  Running ``xenhil reserve --host H`` again while you hold H
extends it.  When you are done, ``xenhil release H``; if you forget, the host
becomes free when the TTL runs out.  Only the holder (same user on the same
machine) may release, unless ``--force``, which is recorded in the grants log
with who forced it.
"""
from __future__ import annotations

import argparse

from xenhil.harness.cli.common import add_lab_options, load_lab, open_lab
from xenhil.harness.errors import ConfigError
from xenhil.harness.lab.model import KNOWN_CAPABILITIES
from xenhil.harness.options import argparse_number, argparse_type, shown, tag

INTERACTIVE_RUN = "interactive"
DEFAULT_INTERACTIVE_TTL = 4 * 3600.0
DEFAULT_INTERACTIVE_TIMEOUT = 60.0


def register(sub: argparse._SubParsersAction) -> None:
    reserve = sub.add_parser("reserve", help="lease a lab host for interactive use",
                             description=__doc__.split("\n\n")[1])
    add_lab_options(reserve)
    reserve.add_argument("--tag", action="append", default=[], metavar="TAG", type=argparse_type(tag, "--tag"),
                         help="the host must have this tag (repeatable)")
    reserve.add_argument("--capability", action="append", default=[], metavar="KEY=VALUE",
                         help="the host must have this capability value, e.g. cpu_vendor=amd, "
                              "iommu=true (repeatable)")
    reserve.add_argument("--host", default=None, help="this host and no other")
    reserve.add_argument("--ttl", type=argparse_number("--ttl"), default=DEFAULT_INTERACTIVE_TTL,
                         metavar="SEC",
                         help="lease lifetime (default 4 h); nothing renews it")
    reserve.add_argument("--timeout", type=argparse_number("--timeout"),
                         default=DEFAULT_INTERACTIVE_TIMEOUT, metavar="SEC",
                         help="how long to wait in line for a busy host (default 60; 0: do not wait)")
    reserve.set_defaults(func=reserve_command)

    release = sub.add_parser("release", help="end a lease on a lab host")
    add_lab_options(release)
    release.add_argument("host", metavar="HOST")
    release.add_argument("--force", action="store_true",
                         help="release someone else's lease (recorded with your name)")
    release.set_defaults(func=release_command)


def parse_capabilities(items: list[str]) -> dict[str, object]:
    """``["cpu_vendor=amd", "iommu=true"]`` -> typed values, as the inventory has them."""
    result: dict[str, object] = {}
    known = ", ".join(sorted(KNOWN_CAPABILITIES))
    for item in items:
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key:
            raise ConfigError(f"--capability {shown(item)}: expected KEY=VALUE",
                              help=f"for example --capability cpu_vendor=amd; keys: {known}")
        kind = KNOWN_CAPABILITIES.get(key)
        if kind is None:
            raise ConfigError(f"--capability {shown(item)}: unknown capability {shown(key)}",
                              help=f"use one of: {known}")
        if kind is bool:
            lowered = text.lower()
            if lowered not in ("true", "false", "yes", "no", "1", "0"):
                raise ConfigError(f"--capability {shown(item)}: {key} is true or false",
                                  help=f"write {key}=true or {key}=false")
            value: object = lowered in ("true", "yes", "1")
        elif kind is int:
            try:
                value = int(text)
            except ValueError:
                raise ConfigError(f"--capability {shown(item)}: {key} is a whole number",
                                  help=f"write e.g. {key}=16") from None
        else:
            value = text
        result[key] = value
    return result


def reserve_command(args: argparse.Namespace) -> int:
    from xenhil.harness.lab.leases import Holder, format_time

    if args.ttl <= 0:
        raise ConfigError(f"--ttl {args.ttl:g}: must be positive", help="pass --ttl SECONDS, e.g. 14400")
    if args.timeout < 0:
        raise ConfigError(f"--timeout {args.timeout:g}: must be 0 or more", help="pass --timeout SECONDS")
    inventory = load_lab(args)               # its secrets registered before any message
    capabilities = parse_capabilities(args.capability)
    if args.host:
        inventory.host(args.host)            # an unknown name, before the store is opened
    carried = {t for host in inventory.hosts.values() for t in host.tags}
    for wanted in args.tag:                  # a tag no host has, before the store is opened
        if wanted not in carried:
            raise ConfigError(f"{inventory.path}: no host matches tags={wanted} (--tag: no host "
                              "has that tag)",
                              help=f"use tags the inventory gives: {', '.join(sorted(carried)) or 'none'}")
    me = Holder.current(run_id=INTERACTIVE_RUN, worker="main")
    pool = open_lab(args, ttl=args.ttl, inventory=inventory, holder=me).pool

    lease = None
    if args.host:
        mine = pool.store.leases().get(args.host)
        if (mine is not None and not mine.expired(pool.store.now())
                and mine.holder.same_person(me) and mine.holder.run_id == INTERACTIVE_RUN):
            pool.candidates(args.tag, capabilities, args.host)  # still validate the request
            lease = pool.store.renew(mine, args.ttl)
            verb = "extended"
    if lease is None:
        lease = pool.claim(me, tags=args.tag, capabilities=capabilities, timeout=args.timeout,
                           host=args.host)
        verb = "reserved"
    print(f"{verb} {lease.host} until {format_time(lease.expires_at)}")
    print(f"  lease:  {lease.id}")
    print(f"  holder: {lease.holder}")
    print(f"  store:  {pool.store.url}")
    print(f"release it with: xenhil release {lease.host}" + _lab_hint(args))
    return 0


def release_command(args: argparse.Namespace) -> int:
    from xenhil.harness.lab.leases import Holder

    inventory = load_lab(args)
    inventory.host(args.host)                # an unknown name, before the store is opened
    me = Holder.current(run_id=INTERACTIVE_RUN, worker="main")
    pool = open_lab(args, inventory=inventory, holder=me).pool
    lease = pool.release_host(args.host, by=me, force=args.force)
    if lease is None:
        print(f"{args.host} was not leased; nothing to release")
    elif lease.holder.same_person(me):
        print(f"released {args.host} (lease {lease.id})")
    else:
        print(f"FORCED release of {args.host}: lease {lease.id} of {lease.holder}; "
              f"recorded with your name in the grants log of {pool.store.url}")
    return 0


def _lab_hint(args: argparse.Namespace) -> str:
    hint = ""
    if getattr(args, "lab", None):
        hint += f" --lab {args.lab}"
    if getattr(args, "lab_db", None):
        hint += f" --lab-db {args.lab_db}"
    return hint
