"""``xenhil bisect``: which patch of a series makes a test fail?  Builds
prefixes of the series with ``xenhil build`` (cached) and runs the test on
each against a lab, in at most 1 + ceil(log2(N)) builds for N patches, and
names the first patch whose prefix fails, with the run that shows it.

    xenhil bisect --lab lab/virtual.yaml --xen-series my-series/ \\
        --test suites/mapcache/test_mapcache.py::test_balloon_down_invalidates_every_server_and_keeps_data \\
        --split single+probe

The base (no patch of the series) is taken as passing, as the caller says.
A run that fails as the lab's fault, skips or records nothing is run again
(--retries); if it still says nothing the bisection stops and blames no
patch.  Exit 0: a patch is named; 1: none is (the whole series passes, a
prefix does not build, a run said nothing); 2: bad input, before anything is
built or any host touched.  Arguments after ``--`` go to every pytest run.
"""
from __future__ import annotations

import argparse
import datetime
import secrets
from pathlib import Path

from xenhil.harness.cli.common import add_build_and_run_options, add_lab_options, lab_path, load_lab
from xenhil.harness.errors import FAILURE_CLASSES, PRODUCT, ConfigError
from xenhil.harness.options import argparse_number

HALVES = ("xen", "qemu")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bisect", help="name the patch of a series that makes a test fail",
        description=__doc__.split("\n\n")[0].replace("``", "") + " Exit 0: a patch named; "
                    "1: none; 2: bad input.  Arguments after -- go to every pytest run.")
    add_lab_options(parser)
    parser.add_argument("--xen-series", metavar="SERIES",
                        help="the hypervisor and toolstack half (a quilt folder, mbox, .patch, "
                             "or git:REPO:A..B)")
    parser.add_argument("--qemu-series", metavar="SERIES", help="the QEMU half")
    parser.add_argument("--bisect", choices=HALVES, default=None,
                        help="the half whose patches are bisected (default: the only one given); "
                             "the other half is applied whole to every prefix")
    parser.add_argument("--test", required=True, metavar="ID",
                        help="the test that fails: suites/SUITE/test_FILE.py::test_NAME, "
                             "without parameters")
    parser.add_argument("--split", required=True, metavar="ID",
                        help="the split it runs on (an id of `xenhil split list`)")
    parser.add_argument("--failure-class", choices=FAILURE_CLASSES, default=PRODUCT,
                        help="the class a failure must have to count against a patch "
                             "(default product)")
    parser.add_argument("--retries", type=argparse_number("--retries"), default=1,
                        help="runs again of a prefix whose run said nothing (default 1)")
    parser.add_argument("--artifacts", default="artifacts",
                        help="the bisection's folder goes under it (default artifacts/)")
    add_build_and_run_options(parser, "the test id")
    parser.set_defaults(func=bisect_command)


def _bisection_id() -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"b{stamp}-{secrets.token_hex(2)}"


def _halves(args: argparse.Namespace) -> tuple[str, str | None]:
    """(the half bisected, the other half's series or None)."""
    given = {half: getattr(args, f"{half}_series") for half in HALVES
             if getattr(args, f"{half}_series")}
    if not given:
        raise ConfigError("no series to bisect", help="give --xen-series SERIES or --qemu-series SERIES")
    half = args.bisect
    if half is None:
        if len(given) > 1:
            raise ConfigError("two series given and no --bisect",
                              help="say which half's patches are bisected: --bisect xen or --bisect qemu")
        [half] = given
    if half not in given:
        raise ConfigError(f"--bisect {half}: no --{half}-series given",
                          help=f"give --{half}-series SERIES, or bisect the half you gave")
    other = next((series for name, series in given.items() if name != half), None)
    return half, other


def bisect_command(args: argparse.Namespace) -> int:
    from xenhil.harness.bisect import Bisection, max_builds, report
    from xenhil.harness.build.series import parse_series
    from xenhil.harness.mutants.catalog import test_id_problem
    from xenhil.harness.options import check_output_folder
    from xenhil.harness.xen.catalog import load_catalog

    # Everything checked before anything is built or any host touched.
    half, other = _halves(args)
    patches = parse_series(getattr(args, f"{half}_series"))
    if not patches:
        raise ConfigError(f"--{half}-series: the series has no patch", help="give a series with patches")
    other_series = None
    if other is not None:
        parse_series(other)            # its problems now, not after the first build
        # The builds run from the checkout: a relative path is made absolute here.
        other_series = str(Path(other).resolve()) if Path(other).exists() else other
    root = args.suites_root.resolve()
    problem = test_id_problem(args.test, root)
    if problem is not None:
        raise ConfigError(f"--test: {problem[0]}", help=problem[1])
    splits = load_catalog()
    if args.split not in splits.ids():
        raise ConfigError(f"--split {args.split!r}: not in the split catalog",
                          help=f"give one of: {', '.join(splits.ids())}")
    load_lab(args)
    lab = str(lab_path(args).resolve())
    artifacts = check_output_folder("--artifacts", args.artifacts).resolve()
    extra = list(getattr(args, "passthrough", []) or [])
    if args.lab_db:
        extra += ["--lab-db", args.lab_db]

    bisection_id = _bisection_id()
    bisection = Bisection(patches, half, other_series, args.test, args.split, lab,
                          artifacts / bisection_id, root, bisection_id,
                          failure_class=args.failure_class, retries=args.retries, extra=extra,
                          jobs=args.jobs, say=lambda line: print(line, flush=True))
    print(f"bisection {bisection_id}: {len(patches)} patches of the {half} half, "
          f"{bisection.node_id}, at most {max_builds(len(patches))} builds; "
          f"folder {bisection.folder}", flush=True)
    outcome = bisection.execute()
    print()
    print(report(bisection, outcome))
    return 0 if outcome.first_bad is not None else 1
