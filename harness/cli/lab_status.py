"""``xenhil lab status``: every host of the inventory, who holds it and until
when, who is waiting in line, which hosts are quarantined (why, since when,
by whom) and the latest health and quarantine events."""
from __future__ import annotations

import argparse
import shutil
import sys


def status_command(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from xenhil.harness.cli.common import open_lab
    from xenhil.harness.lab.leases import format_duration, format_time

    pool = open_lab(args).pool
    now = pool.store.now()
    rows = pool.status(include_expired=True)
    waiters = pool.store.waiters()
    quarantined = pool.store.quarantined()
    events = pool.store.host_events(limit=RECENT_EVENTS)

    read_only = ", read-only" if getattr(pool.store, "read_only", False) else ""
    table = Table(title=f"{pool.inventory.path}  (leases: {pool.store.url}{read_only})",
                  title_justify="left")
    for column in ("HOST", "STATE", "HOLDER", "WORKER", "RUN", "SINCE", "EXPIRES", "LEASE", "TAGS"):
        table.add_column(column, no_wrap=column in ("HOST", "STATE", "LEASE"))
    for spec, lease in rows:
        tags = ",".join(sorted(spec.tags)) or "-"
        q = "quarantined" if spec.name in quarantined else ""
        if lease is None:
            table.add_row(spec.name, q or "free", "-", "-", "-", "-", "-", "-", tags)
            continue
        state = "expired (free)" if lease.expired(now) else "leased"
        if q:
            state = f"{q}, {'leased' if state == 'leased' else 'not leased'}"
        table.add_row(spec.name, state, f"{lease.holder.person} pid {lease.holder.pid}",
                      lease.holder.worker, lease.holder.run_id,
                      format_duration(now - lease.acquired_at) + " ago",
                      format_time(lease.expires_at, now), lease.id, tags)

    # Not a terminal (CI logs, pipes): wide enough that nothing is cut.
    width = None if sys.stdout.isatty() else max(200, shutil.get_terminal_size().columns)
    console = Console(width=width, highlight=False)
    console.print(table)
    leased = sum(1 for _, lease in rows if lease is not None and not lease.expired(now))
    console.print(f"{leased} of {len(rows)} hosts leased, {len(waiters)} waiting")
    for waiter in waiters:
        console.print(f"  waiting #{waiter.ticket}: {waiter.holder} since "
                      f"{format_time(waiter.enqueued_at, now)} for {', '.join(waiter.candidates)}")
    # Plain lines, not rich markup: reasons are free text ("[infrastructure] ...").
    out = console.file
    print(f"{len(quarantined)} quarantined (claims skip them)", file=out)
    for q in quarantined.values():
        print(f"  {q.host}: quarantined since {format_time(q.since, now)} by {q.by}, "
              f"{q.infra_failures} infrastructure failure{'' if q.infra_failures == 1 else 's'} "
              f"counted: {q.reason}", file=out)
    if quarantined:
        print("  a passing `xenhil lab health HOST` returns a host; "
              "`xenhil lab unquarantine HOST --reason TEXT` without a check (logged)", file=out)
    if events:
        print("latest health and quarantine events (newest last):", file=out)
        for e in events:
            print(f"  {format_time(e.at, now)}  {e.host}  {e.kind}  by {e.by}: {e.reason}",
                  file=out)
    return 0


#: How many host events `xenhil lab status` shows.
RECENT_EVENTS = 10
