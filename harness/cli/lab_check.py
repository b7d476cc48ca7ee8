"""``xenhil lab check [FILE] [--learn]``: validate a lab inventory.

Exit 0 and "OK: N hosts in FILE" when valid; otherwise every problem, one per
line, and exit 2.  ``--learn`` fetches the host keys of hosts with none pinned
(trust on first use, logged) and prints the ``host_key:`` lines to add; the
file is never rewritten, and the exit stays 2 until the keys are pinned.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from xenhil.harness.cli.common import lab_path
from xenhil.harness.lab.inventory import (InventoryError, Problem, check_inventory, load_inventory,
                                          parse_host_key)
from xenhil.harness.lab.inventory_learn import fingerprint

EXIT_OK = 0
EXIT_INVALID = 2


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", help="inventory YAML (default: --lab / $XENHIL_LAB)")
    parser.add_argument("--learn", action="store_true",
                        help="fetch host keys of hosts without a pinned key (trust on first use, "
                             "logged) and print the lines to pin them")


def check_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    path = Path(args.file) if getattr(args, "file", None) else lab_path(args)
    problems = check_inventory(path, learn=bool(getattr(args, "learn", False)))
    if not problems:
        try:
            inventory = load_inventory(path)
        except InventoryError as exc:  # the file changed between the two reads
            problems = exc.problems
        else:
            print(f"OK: {len(inventory.hosts)} hosts in {path}", file=out)
            return EXIT_OK
    for problem in problems:
        print(problem, file=out)
    learned = [p for p in problems if p.learned_host_key]
    if learned:
        print(_learned_snippet(learned), file=out)
    count = len(problems)
    print(f"{count} problem{'s' if count != 1 else ''} in {path}", file=out)
    return EXIT_INVALID


def _learned_snippet(learned: list[Problem]) -> str:
    lines = ["",
             "# Host keys learned on first use. They are NOT verified: compare each fingerprint",
             "# with the host's own key (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on its",
             "# console) before adding these lines under each host's ssh: section.",
             "hosts:"]
    for problem in learned:
        name = problem.host if isinstance(problem.host, str) else f"hosts[{problem.host}]"
        blob = parse_host_key(problem.learned_host_key)[1]
        lines += [f"  - name: {name}   # fingerprint {fingerprint(blob)}", "    ssh:",
                  f"      host_key: \"{problem.learned_host_key}\""]
    return "\n".join(lines) + "\n"


__all__ = ["check_command", "add_check_arguments"]
