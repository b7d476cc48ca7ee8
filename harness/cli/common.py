"""Options shared by the verbs: which lab inventory and which lease store,
and the verbs' :class:`~harness.lab.lab.Lab` (the object the pytest plugin
uses too)."""
from __future__ import annotations

import argparse
from pathlib import Path

from xenhil.harness.errors import ConfigError
from xenhil.harness.run_config import LAB_OPTIONS, lab_option


def add_lab_options(parser: argparse.ArgumentParser) -> None:
    # Declared once, for these verbs and the pytest plugin (harness.run_config).
    for name, declaration in LAB_OPTIONS.items():
        parser.add_argument(name, **declaration)


def load_lab(args: argparse.Namespace):
    """The inventory named by --lab/$XENHIL_LAB, checked, with every secret
    it references registered for masking before the verb does anything
    (harness.lab.credentials); --lab-db is checked too."""
    from xenhil.harness.lab.credentials import register_inventory_secrets
    from xenhil.harness.lab.inventory import load_inventory
    from xenhil.harness.options import check_input_path, check_store_url

    path = lab_path(args)
    if getattr(args, "lab_db", None) is not None:
        check_store_url("--lab-db", args.lab_db, postgres=True)
    check_input_path("--lab", path, folder=False)
    inventory = load_inventory(path)
    register_inventory_secrets(inventory, (getattr(args, "lab_db", None),))
    return inventory


def open_lab(args: argparse.Namespace, ttl: float = 60.0, inventory=None, holder=None):
    """The lab named by --lab/$XENHIL_LAB and --lab-db (the inventory read
    with :func:`load_lab` unless given); its lease store opens on first use
    of ``.pool``."""
    from xenhil.harness.lab.lab import Lab
    inventory = inventory if inventory is not None else load_lab(args)
    return Lab(inventory, lab_db=getattr(args, "lab_db", None), ttl=ttl, holder=holder)


def lab_path(args: argparse.Namespace) -> Path:
    value = lab_option(getattr(args, "lab", None))
    if not value:
        raise ConfigError("no lab inventory given",
                          help="pass --lab lab/NAME.yaml or set XENHIL_LAB")
    return Path(value)


def add_build_and_run_options(parser: argparse.ArgumentParser, ids: str) -> None:
    """--suites-root and -j, for the verbs that build series and run suites
    on them (qualify, bisect); ``ids``: what the test ids are, in the help."""
    from xenhil.harness.mutants.catalog import REPO
    from xenhil.harness.options import argparse_number
    parser.add_argument("--suites-root", type=Path, default=REPO,
                        help=f"the folder {ids} are relative to (pytest's rootdir; default "
                             "this checkout)")
    parser.add_argument("-j", "--jobs", type=argparse_number("--jobs"), default=None,
                        help="compile jobs of the builds (default: xenhil build's)")
