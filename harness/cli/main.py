"""xenhil: hardware-in-the-loop tests for Xen's multiple ioreq servers.

The command line has one verb module per concern, each registering its own
sub-commands (``register(subparsers)``) and returning an exit status.

Exit codes (README "Exit codes"): 0 done; 1 the action failed (the lab:
a host, BMC or store did not answer; or a product failure); 2 bad input
(options, inventory, split strings, a file that is not what it claims:
also a damaged save file given to ``xenhil savefile inspect``); 3 a bug in
xenhil; 130 interrupted.  Every error is one line, ``xenhil: error: WHAT;
fix: HOW``, that never repeats a secret; ``-v`` adds the traceback of a bug.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from xenhil.harness.errors import ConfigError, XenhilError

# Verb modules under harness.cli, each with register(subparsers).
VERB_MODULES = ["lab", "reserve", "host", "power", "split", "savefile", "report", "build", "nightly", "qualify",
                "bisect"]

EXIT_USAGE = 2       # bad input: inventory, split string, options, a file that is not what it claims
EXIT_FAILURE = 1     # the action failed (host unreachable, ...)
EXIT_BUG = 3         # an exception xenhil did not expect: a bug


class Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (exit 2), like every other
    bad input; sub-commands get the same class."""

    def error(self, message: str):  # type: ignore[override]
        from xenhil.harness.secrets import redact_inline
        fix = "" if "; fix:" in message else f"; fix: see `{self.prog} --help`"
        self.exit(EXIT_USAGE, f"{self.prog}: error: {redact_inline(message)}{fix}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="xenhil", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(f"xenhil.harness.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"xenhil.harness.cli.{name}":
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
    # Before parsing: argparse's errors and the options' checks echo values.
    _register_lab_secrets(argv)
    args = parser.parse_args(argv)
    args.passthrough = passthrough
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    from xenhil.harness.secrets import ScrubbingLogFilter
    for handler in logging.getLogger().handlers:
        handler.addFilter(ScrubbingLogFilter())
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        _print_error(exc)
        return EXIT_USAGE
    except XenhilError as exc:
        _print_failure(exc)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except (MemoryError, RecursionError) as exc:
        # An input this large or deep got past the limits: still bad input, said in one line.
        print(f"xenhil: error: the input is too large or too deeply nested to process "
              f"({type(exc).__name__}); fix: give a smaller input", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # a bug: one line, the traceback with -v
        from xenhil.harness.secrets import redact_inline
        if args.verbose:
            import traceback
            print(redact_inline(traceback.format_exc()), file=sys.stderr, end="")
        print(f"xenhil: internal error: {type(exc).__name__}: "
              f"{redact_inline(str(exc).splitlines()[0] if str(exc) else '')}; fix: this is a bug "
              "in xenhil: report it with the output of the same command run with -v",
              file=sys.stderr)
        return EXIT_BUG


def _register_lab_secrets(argv: list[str]) -> None:
    """Every secret the lab (--lab, else $XENHIL_LAB) references, registered
    for masking before the arguments are even parsed, whatever the verb: a
    secret typed into any argument is then masked in every message.  Best
    effort: a verb that needs the lab reports its problems itself."""
    from xenhil.harness.lab.credentials import register_lab_secrets_early
    from xenhil.harness.run_config import lab_option

    def given(option: str) -> str | None:
        for i, arg in enumerate(argv):
            if arg == option and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(option + "="):
                return arg[len(option) + 1:]
        return None
    register_lab_secrets_early(lab_option(given("--lab")),
                               (given("--lab-db"), given("--results-db")))


def _print_error(exc: ConfigError) -> None:
    """Bad input: one line per problem (an inventory's every problem), each
    naming the field and its fix, secrets masked."""
    from xenhil.harness.options import detail_lines, one_line
    from xenhil.harness.secrets import redact_inline
    problems = getattr(exc, "problems", None)
    if problems:   # an inventory's or a split's: one line each, a split's with its pointer
        for problem in problems:
            line = problem.one_line() if hasattr(problem, "one_line") else str(problem)
            print(f"xenhil: error: {redact_inline(line)}", file=sys.stderr)
            for detail in getattr(problem, "pointer", lambda: [])():
                print(redact_inline(detail), file=sys.stderr)
        return
    print(f"xenhil: error: {one_line(exc)}", file=sys.stderr)
    for line in detail_lines(exc):
        print(f"  {line}", file=sys.stderr)


def _print_failure(exc: XenhilError) -> None:
    from xenhil.harness.secrets import redact_inline
    print(redact_inline(f"xenhil: {exc.failure_class} failure: {exc}"), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
