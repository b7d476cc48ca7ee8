"""``xenhil split check|list``: validate a device_models split and show which
model owns which device class; list the split catalog."""
from __future__ import annotations

import argparse
import os

from xenhil.harness.options import argparse_type
from xenhil.harness.xen import splits
from xenhil.harness.xen.catalog import load_catalog
from xenhil.harness.xen.splits import Split, parse_split


def register(subparsers) -> None:
    parser = subparsers.add_parser("split", help="check device_models splits, list the catalog")
    sub = parser.add_subparsers(dest="split_verb", required=True, metavar="SUBVERB")

    check = sub.add_parser(
        "check", help="validate model strings and print the owner of each device class",
        description="Validate the model strings of a device_models option, e.g. "
                    "xenhil split check 'name=qnet,vifs=nic1' 'name=qall,ui,ide' --vif nic1. "
                    "Exit status 2 and every problem when the split is wrong.")
    check.add_argument("models", nargs="*", metavar="MODEL",
                       help="one model string per device model (quote each)")
    check.add_argument("--vif", action="append", default=None, metavar="ID",
                       type=argparse_type(splits.check_vif_id, "--vif"),
                       help="a vif id of the guest (repeat); then every guest vif must be owned "
                            "and every vifs= id must be a guest vif")
    check.add_argument("--has", action="append", default=[], metavar="CLASS",
                       choices=[c for c in splits.FLAGS if c not in splits.ALWAYS_PRESENT],
                       help="a device class the guest has (audio, ide, serial; repeat): "
                            "it must then have an owner")
    check.add_argument("--check-paths", action="store_true",
                       help="check path= values on this machine (default: left to the host)")
    check.set_defaults(func=cmd_check)

    lister = sub.add_parser("list", help="print the split catalog (fixtures/splits.yaml)")
    lister.add_argument("--catalog", default=None, help="catalog YAML (default: fixtures/splits.yaml)")
    lister.set_defaults(func=cmd_list)


def ownership_lines(split: Split, guest_vifs: list[str] | None = None) -> list[str]:
    """The owner table as text lines: class, owner, what the class covers."""
    table = split.ownership(guest_vifs or ())
    width = max(len("class"), *(len(c) for c in table))
    owner_width = max(len("owner"), *(len(o or "-") for o in table.values()))
    lines = [f"  {'class':<{width}}  {'owner':<{owner_width}}  covers"]
    for cls, owner in table.items():
        if cls.startswith(splits.NIC_PREFIX):
            covers = f"NIC of vif id={cls[len(splits.NIC_PREFIX):]}"
        else:
            covers = splits.CLASS_COVERS[cls]
        if owner is None:
            covers += " (no model: the guest must not have it)"
        lines.append(f"  {cls:<{width}}  {owner or '-':<{owner_width}}  {covers}")
    return lines


def cmd_check(args: argparse.Namespace) -> int:
    split = parse_split(list(args.models), guest_vifs=args.vif, guest_classes=list(args.has),
                        path_exists=os.path.exists if args.check_paths else None,
                        source="the command line")
    count = len(split.model_names)
    print(f"split {split.id}: {count} model{'s' if count != 1 else ''}, requires "
          f"{', '.join(split.requires) or 'nothing'}")
    for line in ownership_lines(split, args.vif):
        print(line)
    print(split.to_xl())
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    catalog = load_catalog(args.catalog)
    print(f"{len(catalog)} splits in {catalog.path}")
    for entry in catalog:
        requires = ", ".join(entry.requires) or "nothing"
        print(f"\n{entry.id}  (requires {requires}){'  + probe ioreq server' if entry.probe else ''}")
        if entry.about:
            print(f"  {entry.about}")
        print(f"  {entry.split.to_xl() or '(no device_models option)'}")
        for line in ownership_lines(entry.split, list(entry.guest_vifs)):
            print("  " + line)
    return 0
