"""``xenhil savefile inspect FILE [--json] [--libxc]``: list the records of an
xl save file (plain or .gz) and which emulator (id, index) pairs it holds."""
from __future__ import annotations

import argparse
import json

from xenhil.harness.errors import ConfigError
from xenhil.harness.xen.savefile import CorruptSaveFile, format_savefile, parse_savefile


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("savefile", help="inspect xl save files")
    verbs = parser.add_subparsers(dest="savefile_verb", required=True, metavar="ACTION")
    inspect = verbs.add_parser("inspect", help="list the records of an xl save file")
    inspect.add_argument("file", help="file written by `xl save` (may be gzip-compressed)")
    inspect.add_argument("--json", action="store_true", help="print one JSON document")
    inspect.add_argument("--libxc", action="store_true",
                         help="also list every libxc record (one line per PAGE_DATA record)")
    inspect.set_defaults(func=inspect_command)


def inspect_command(args: argparse.Namespace) -> int:
    # At the command line a file that is not what it claims is bad input
    # (exit 2): NotASaveFile already is a ConfigError, and CorruptSaveFile
    # (a ProductError when a suite reads a save the product wrote) is made one.
    try:
        save = parse_savefile(args.file)
    except CorruptSaveFile as exc:
        raise ConfigError(f"save file {exc.args[0]}", help=CorruptSaveFile.help.split(": ")[0]
                          + ": give an intact file written by `xl save`") from None
    if args.json:
        data = save.to_dict()
        if args.libxc:
            for stream, out in zip(save.libxc, data["libxc"]):
                out["record_list"] = [r.to_dict() for r in stream.records]
        print(json.dumps(data, indent=2))
    else:
        print(format_savefile(save, libxc_records=args.libxc))
    return 0
