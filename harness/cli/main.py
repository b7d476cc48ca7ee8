"""xenhil: hardware-in-the-loop tests for Xen's multiple ioreq servers.

The command line has one verb module per concern, each registering its own
sub-commands (``register(subparsers)``) and returning an exit status."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from harness.errors import ConfigError, XenhilError

# Verb modules under harness.cli, each with register(subparsers).
VERB_MODULES = ["lab", "reserve", "host", "power", "split", "savefile", "report", "build"]

EXIT_USAGE = 2       # bad input: inventory, split string, options
EXIT_FAILURE = 1     # the action failed (host unreachable, ...)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xenhil", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(f"harness.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"harness.cli.{name}":
                continue  # verb not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" is a command for a remote host, passed
    # through untouched (argparse's own "--" handling breaks in sub-parsers).
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    args.passthrough = passthrough
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"xenhil: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except XenhilError as exc:
        print(f"xenhil: {exc.failure_class} failure: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
