"""``xenhil qualify``: do the suites catch planted bugs?  For each mutant of
``lab/mutants/mutants.yaml`` (or those named with --mutant): build it (the
build cache answers what was built before), run the tests that must catch
it on a lab, run the unmutated build on the same tests in the same
qualification, and print mutant -> caught by -> class -> time.

    xenhil qualify --lab lab/virtual.yaml --mutant probe-delay -- -n 2
    xenhil qualify --lab lab/virtual.yaml --mutant probe-delay --repeat 5
    xenhil qualify --check            # the catalog alone: every problem, exit 2

Exit 0 when every mutant is caught with its failure class and the unmutated
build passes; 1 when one escapes, fails with another class, does not run or
does not build, or when the unmutated build fails; 2 on bad input (the
catalog, the options), before anything is built or any host touched.
Arguments after ``--`` go to every pytest run (``-n 2``, ``--latency-samples``).
"""
from __future__ import annotations

import argparse
import datetime
import secrets
import time
from pathlib import Path

from xenhil.harness.cli.common import add_build_and_run_options, add_lab_options, lab_path, load_lab
from xenhil.harness.options import argparse_number


def register(subparsers) -> None:
    from xenhil.harness.mutants.catalog import DEFAULT_CATALOG
    parser = subparsers.add_parser(
        "qualify", help="run the mutant catalog: every planted bug must be caught",
        description=__doc__.split("\n\n")[0].replace("``", "") + " Exit 0: all caught and the "
                    "unmutated build green; 1: not so; 2: bad input.  Arguments after -- go to "
                    "every pytest run.")
    add_lab_options(parser)
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG,
                        help="the mutant catalog (default lab/mutants/mutants.yaml)")
    parser.add_argument("--mutant", action="append", default=[], metavar="ID",
                        help="qualify only this mutant (repeatable; default: all)")
    parser.add_argument("--repeat", type=argparse_number("--repeat"), default=1, metavar="N",
                        help="run each chosen mutant N times, the unmutated build once (default "
                             "1): a catch that must hold run after run, e.g. --mutant "
                             "probe-delay --repeat 5 on a noisy host")
    parser.add_argument("--check", action="store_true",
                        help="only check the catalog and list its mutants (no build, no lab)")
    parser.add_argument("--artifacts", default="artifacts",
                        help="the runs' --artifacts (default artifacts/); the qualification's "
                             "logs and series go to its own folder under it")
    parser.add_argument("--results-db", default=None, metavar="URL",
                        help="the runs' results store (default: the qualification's own, "
                             "results.sqlite in its folder, so that mutant runs are no other "
                             "run's history); outcomes and failure classes are read from it")
    add_build_and_run_options(parser, "the catalog's test ids")
    parser.set_defaults(func=qualify_command)


def _qualification_id() -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"q{stamp}-{secrets.token_hex(2)}"


def qualify_command(args: argparse.Namespace) -> int:
    from xenhil.harness.mutants.catalog import load_mutant_catalog
    from xenhil.harness.mutants.qualify import Qualification, passed, summary, table
    from xenhil.harness.options import check_output_folder, check_store_url

    # Everything checked before anything is built or any host touched.
    catalog = load_mutant_catalog(args.catalog, root=args.suites_root)
    mutants = catalog.chosen(args.mutant)
    if args.check:
        for m in mutants:
            print(f"{m.id}: {m.breaks}\n  {m.what}; splits {', '.join(m.splits)}; caught by "
                  f"{', '.join(m.caught_by)} ({m.failure_class})")
        print(f"{len(mutants)} mutant(s), catalog {catalog.path}: no problem")
        return 0
    load_lab(args)
    lab = str(lab_path(args).resolve())
    artifacts = check_output_folder("--artifacts", args.artifacts).resolve()
    if args.results_db:
        check_store_url("--results-db", args.results_db, postgres=True)
    extra = list(getattr(args, "passthrough", []) or [])
    if args.lab_db:
        extra += ["--lab-db", args.lab_db]
    qualification = Qualification(catalog, mutants, lab, artifacts, args.suites_root.resolve(),
                                  results_db=args.results_db, extra=extra,
                                  qualification_id=_qualification_id(), jobs=args.jobs,
                                  repeat=int(args.repeat))
    times = f" x {int(args.repeat)} runs each" if args.repeat > 1 else ""
    print(f"qualification {qualification.qualification_id}: {len(mutants)} mutant(s){times} and "
          f"the unmutated build, folder {qualification.folder}", flush=True)
    started = time.monotonic()
    runs = qualification.execute()
    print()
    print(table(runs))
    print()
    print(summary(runs, time.monotonic() - started))
    return 0 if passed(runs) else 1
