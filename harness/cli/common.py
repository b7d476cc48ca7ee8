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


def lab_path(args: argparse.Namespace) -> Path:
    value = getattr(args, "lab", None) or os.environ.get("XENHIL_LAB")
    if not value:
        raise ConfigError("no lab inventory given",
                          help="pass --lab lab/NAME.yaml or set XENHIL_LAB")
    return Path(value)
