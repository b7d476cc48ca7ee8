"""Options shared by the verbs: which lab inventory and which lease store."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from harness.errors import ConfigError


def add_lab_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lab", default=None,
                        help="lab inventory YAML (default: $XENHIL_LAB)")
    parser.add_argument("--lab-db", default=None,
                        help="lease store URL: sqlite:///PATH (default next to the inventory) "
                             "or postgresql://...")


def load_lab(args: argparse.Namespace):
    """The inventory named by --lab/$XENHIL_LAB, checked, with every secret
    it references registered for masking before the verb does anything
    (harness.lab.credentials); --lab-db is checked too."""
    from harness.lab.credentials import register_inventory_secrets
    from harness.lab.inventory import load_inventory
    from harness.options import check_input_path, check_store_url

    path = lab_path(args)
    if getattr(args, "lab_db", None) is not None:
        check_store_url("--lab-db", args.lab_db, postgres=True)
    check_input_path("--lab", path, folder=False)
    inventory = load_inventory(path)
    register_inventory_secrets(inventory, (getattr(args, "lab_db", None),))
    return inventory


def lab_path(args: argparse.Namespace) -> Path:
    value = getattr(args, "lab", None) or os.environ.get("XENHIL_LAB")
    if not value:
        raise ConfigError("no lab inventory given",
                          help="pass --lab lab/NAME.yaml or set XENHIL_LAB")
    return Path(value)
