"""Differential test: xl's C parser of device_models (patch 0001, through
dm_parse_check) against harness/xen/splits.py.  Both must accept and refuse
the same splits.

    cd /work/main && .venv/bin/python lab/series/device-models/xen/tests/parser_diff.py \
        /tmp/dm_parse_check [N_RANDOM]

LD_LIBRARY_PATH must reach the built libxlutil and libxenlight.  Cases: every
split of fixtures/splits.yaml, hand-written edge cases, and N_RANDOM seeded
mutations of the fixture splits, each against a few guests (vif ids, with or
without a serial port, disks and a sound card).
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[5]))
import yaml  # noqa: E402

from xenhil.harness.xen.splits import SplitError, parse_split  # noqa: E402

ROOT = Path(__file__).resolve().parents[5]

GUESTS = [
    # (vif ids, serial, disks, soundhw)
    (["nic1"], True, 1, None),
    (["nic1", "nic2"], True, 1, None),
    (["nic1"], False, 0, None),
    (["nic1"], True, 1, "hda"),
    ([], True, 1, None),
]

EDGE = [
    [""], [" "], ["ui"], ["ui", ""], [" ui"], ["ui "], ["UI"], ["ui,ui"], ["ui,"], [",ui"],
    ["ui,,ide"], ["name=a,ui", "name=a,ide"], ["name=0,ide", "ui"], ["ui", "name=1,ide"],
    ["name=,ui"], ["name=-a,ui"], ["name=a-b_c,ui"], ["name=" + "a" * 32 + ",ui"],
    ["name=" + "a" * 33 + ",ui"], ["name=a+b,ui"], ["name=a,name=b,ui"], ["Name=a,ui"],
    ["ui=1"], ["=ui"], ["path=/x,ui"], ["name=q,path=/x,ui"], ["name=q,path=x,ui"],
    ["name=q,path=,ui"], ["name=q,path=/a b,ui"], ["ui,vifs=nic1"], ["ui,vifs=nic1;"],
    ["ui,vifs=;nic1"], ["ui,vifs=nic1;;nic2"], ["ui,vifs=nic1; nic2"], ["ui,vifs=nic1;nic1"],
    ["ui,vifs=nic1,nic2"], ["ui,vifs=nic1", "vifs=nic1"], ["ui,vifs=.nic1"], ["ui,vifs=n.i-c_1"],
    ["ui,vifs=nic1", "ide,serial"], ["ui,ide,serial,audio,vifs=nic1;nic2"], ["name=x"],
    ["ui,ide", "ide"], ["ui", "serial", "serial"], ["ui", "audio"], ["ide,serial,vifs=nic1"],
    ["ui,\tide"], ["ui\t"], ["ui,ide\x7f"], ["ui,vifs=nic1;nic2", "name=q"],
    ["name=q,ui,vifs=nic9"], ["ui,vifs=" + "n" * 33], ["ui,ide,serial,vifs=nic1", "name=é,audio"],
    ["name=a,ui,ide,serial"] + [f"name=m{i},vifs=nic1" for i in range(1)],
    [f"name=m{i},audio" if i == 0 else f"name=m{i},ui,ide,serial,vifs=nic1;nic2" if i == 1
     else f"name=m{i},vifs=x{i}" for i in range(9)],
    ["name=a,ui,ide,serial,vifs=nic1;nic2"] * 1 + [f"name=b{i},ide" for i in range(0)],
]

ALPHABET = [",", ";", " ", "=", "ui", "ide", "serial", "audio", "name=", "vifs=", "path=/x",
            "Ui", "\t", "-", ".", "1", "nic1", "nic2", "q", "a", ""]


def mutate(rng: random.Random, specs: list[str]) -> list[str]:
    specs = list(specs)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(6)
        i = rng.randrange(len(specs)) if specs else 0
        if op == 0 and specs:      # insert a token
            s = specs[i]
            p = rng.randint(0, len(s))
            specs[i] = s[:p] + rng.choice(ALPHABET) + s[p:]
        elif op == 1 and specs:    # delete a span
            s = specs[i]
            if s:
                p = rng.randrange(len(s))
                specs[i] = s[:p] + s[p + rng.randint(1, 4):]
        elif op == 2 and len(specs) > 1:
            del specs[i]
        elif op == 3:
            specs.insert(i, rng.choice(["ui", "ide", "serial", "audio", "vifs=nic2", "name=x,ide"]))
        elif op == 4 and specs:    # move an item between models
            j = rng.randrange(len(specs))
            items = specs[i].split(",")
            it = items.pop(rng.randrange(len(items)))
            specs[i] = ",".join(items)
            specs[j] = specs[j] + "," + it
        elif op == 5 and specs:
            specs[i] = specs[i].replace(rng.choice(["ui", "ide", "serial", "nic1", "name"]),
                                        rng.choice(["", "UI", "ide", "nic2", "nme"]), 1)
    return specs


def python_verdict(specs, guest):
    vifs, serial, disks, sound = guest
    classes = (["serial"] if serial else []) + (["ide"] if disks else []) + (["audio"] if sound else [])
    try:
        parse_split(specs, guest_vifs=vifs, guest_classes=classes)
        return True, ""
    except SplitError as exc:
        return False, "; ".join(exc.messages())


def c_verdict(binary, specs, guest, tmp: Path):
    vifs, serial, disks, sound = guest
    lines = []
    if vifs:
        lines.append("test_vifs = [ " + ", ".join(f"'{v}'" for v in vifs) + " ]")
    lines.append(f"test_serial = {int(serial)}")
    lines.append(f"test_disks = {disks}")
    if sound:
        lines.append(f"test_soundhw = '{sound}'")
    lines.append("device_models = [ " + ", ".join(f"'{s}'" for s in specs) + " ]")
    cfg = tmp / "case.cfg"
    cfg.write_bytes(("\n".join(lines) + "\n").encode())
    r = subprocess.run([binary, str(cfg)], capture_output=True, text=True)
    if r.returncode == 2:
        return None, r.stderr.strip()
    return r.returncode == 0, (r.stdout if r.returncode == 0 else r.stderr).strip()


def main() -> int:
    binary = sys.argv[1]
    n_random = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    fixture = yaml.safe_load((ROOT / "fixtures/splits.yaml").read_text())
    base = [s["device_models"] for s in fixture["splits"] if s["device_models"]]
    rng = random.Random(13)
    cases = [(s, g) for s in base + EDGE for g in GUESTS]
    for _ in range(n_random):
        cases.append((mutate(rng, rng.choice(base)), rng.choice(GUESTS)))
    agree = disagree = skipped = accepted = 0
    with tempfile.TemporaryDirectory() as d:
        for specs, guest in cases:
            if any("'" in s or "\n" in s for s in specs):
                skipped += 1
                continue
            c_ok, c_msg = c_verdict(binary, specs, guest, Path(d))
            if c_ok is None:
                skipped += 1          # not expressible as an xl config string
                continue
            py_ok, py_msg = python_verdict(specs, guest)
            if c_ok == py_ok:
                agree += 1
                accepted += c_ok
            else:
                disagree += 1
                print(json.dumps({"specs": specs, "guest": guest, "c": c_ok, "python": py_ok,
                                  "c_msg": c_msg[:300], "py_msg": py_msg[:300]}))
    print(f"cases {len(cases)}: agree {agree} (accepted {accepted}), disagree {disagree}, "
          f"skipped {skipped}")
    return 1 if disagree else 0


if __name__ == "__main__":
    sys.exit(main())
