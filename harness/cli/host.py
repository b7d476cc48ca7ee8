"""``xenhil host run HOST -- CMD`` and ``xenhil host console HOST``: the lab at a
developer's fingertips through the same classes the tests use."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from xenhil.harness.cli.common import add_lab_options, load_lab
from xenhil.harness.errors import ConfigError
from xenhil.harness.options import argparse_number


def _host_spec(args: argparse.Namespace):
    return load_lab(args).host(args.host)


def _run(args: argparse.Namespace) -> int:
    from xenhil.harness.host import Host

    command = list(args.command) + list(getattr(args, "passthrough", []))
    if not command:
        raise ConfigError("no command given", help="xenhil host run HOST -- CMD [ARG...]")
    spec = _host_spec(args)
    from xenhil.harness.options import check_output_folder
    check_output_folder("--artifacts", args.artifacts)
    if spec.ssh is None:                     # the inventory says so: before anything is made
        raise ConfigError(f"host {spec.name} has `ssh: none` in the inventory (hosts[{spec.name}].ssh)",
                          help="give the host an ssh: section to run commands on it")
    # One word: the user's own shell line ("xenhil host run h -- 'xl list | wc -l'");
    # several words: quote each, as ssh would not.
    line = command[0] if len(command) == 1 else shlex.join(command)
    host = Host(spec, Path(args.artifacts))
    try:
        result = host.ssh.run(line, timeout=args.timeout)
    finally:
        host.close()
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.exit_status


def _console(args: argparse.Namespace) -> int:
    from xenhil.harness.access.console import console_for
    from xenhil.harness.cli.console_interactive import interactive

    from xenhil.harness.options import check_output_folder
    spec = _host_spec(args)
    transcripts = check_output_folder("--transcripts", args.transcripts)
    transcripts.mkdir(parents=True, exist_ok=True)
    console = console_for(spec, transcripts)
    print(f"connected to {spec.name}'s console; Ctrl-] leaves "
          f"(transcript in {transcripts})", file=sys.stderr)
    try:
        interactive(console)
    finally:
        console.close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    host = sub.add_parser("host", help="run a command on, or attach to, a lab host")
    verbs = host.add_subparsers(dest="host_verb", required=True, metavar="ACTION")

    run = verbs.add_parser("run", help="run a command over SSH; its exit status is passed through")
    add_lab_options(run)
    run.add_argument("host")
    run.add_argument("--timeout", type=argparse_number("--timeout (host run)"), default=600.0,
                     metavar="SEC", help="the command's time limit (default 600)")
    run.add_argument("--artifacts", default="artifacts/cli", help=argparse.SUPPRESS)
    # The command comes after "--" (main() passes it through untouched), so
    # options may also follow HOST.
    run.add_argument("command", nargs="*", help="-- CMD [ARG...]: the command")
    run.set_defaults(func=_run)

    console = verbs.add_parser("console", help="interactive serial console (Ctrl-] to leave)")
    add_lab_options(console)
    console.add_argument("host")
    console.add_argument("--transcripts", default="artifacts/console",
                         help="folder for the transcript (default artifacts/console)")
    console.set_defaults(func=_console)
