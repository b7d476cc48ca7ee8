"""The PCI topology a guest must see, derived from the split and from the
device-model (QEMU) command lines actually running, never from a constant
table of BDFs (docs/xen-ioreq-facts.md section 5: QEMU versions differ).

How QEMU places PCI functions on bus 0 (read from QEMU's hw/i386/pc_piix.c,
old and new, and hw/pci/pci.c):

1. The machine (``-machine xenfv`` or ``pc``) creates the i440FX host bridge
   at 00:00.0 and the PIIX3 at 00:01.0 with fixed functions: IDE 01.1, USB
   UHCI 01.2 (with ``-usb``), PIIX4 ACPI 01.3 (unless ``-no-acpi`` or
   ``acpi=off``).
2. Still inside machine init, in this order: the legacy ``-vga`` card, then
   (``xenfv`` only) the Xen platform device, then legacy ``-net nic`` NICs.
   Old pc_piix.c (QEMU 1.x, the series' era) creates the platform device
   right after the VGA card; current QEMU creates it after pc_init1()
   returns, i.e. after legacy NICs too.  libxl never passes ``-net nic`` for
   qemu-xen (it uses ``-device``), so the difference matters only for hand
   made command lines: see LEGACY_NIC_BEFORE_PLATFORM.
3. Then ``-soundhw`` cards (UNVERIFIED position, see SOUNDHW_AFTER_PLATFORM),
   then every ``-device`` in command-line order.
4. A device without ``addr=`` takes the first slot whose function 0 is free
   (hw/pci/pci.c do_pci_register_device, ``devfn += PCI_FUNC_MAX``).

So with libxl 4.17 (``-device cirrus-vga``) the platform device is 02.0 and
VGA 03.0; with the old ``-vga cirrus`` VGA is 02.0 and the platform 03.0.

With several models, each QEMU lays out its own bus.  A device created by
the machine (bridges, IDE, ACPI, platform) exists in every QEMU that has the
machine; only the model owning its device class registers it with Xen, so it
is attributed to that owner.  A device given explicitly (``-device``,
``-vga``, ``-net nic``, ``-soundhw``) belongs to the model whose command line
has it, and the split must agree.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from xenhil.harness.checks.failure import CheckFailed, Evidence, Mismatch, fail_if
from xenhil.harness.errors import TestBugError
from xenhil.harness.xen import splits
from xenhil.harness.xen.parsers.rangesets import sbdf_to_str, str_to_sbdf
from xenhil.harness.xen.splits import Split

# --------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------

#: Device class of the Xen platform device.  Not a class of the series (its
#: owner is an open question of the series): the owner is passed in.
PLATFORM = "platform"
#: Device class and type of the probe ioreq server's PCI function.
PROBE_CLASS = "probe"
PROBE_TYPE = "xenhil-probe"


@dataclass(frozen=True)
class PciIdent:
    vendor: int
    device: int
    class_code: int        # base << 8 | sub-class
    name: str
    role: str              # device class: ui, ide, audio, nic, platform
    source: str            # where the ids come from


_PCI_IDS_H = "QEMU include/hw/pci/pci_ids.h"

#: QEMU device type -> PCI identity.  Add a row (with its source) to support
#: another device; an unknown -device on a command line is an error, so that
#: a new device never goes unchecked.
PCI_DEVICE_IDS: dict[str, PciIdent] = {
    "i440FX": PciIdent(0x8086, 0x1237, 0x0600, "i440FX host bridge", splits.UI, _PCI_IDS_H),
    "PIIX3": PciIdent(0x8086, 0x7000, 0x0601, "PIIX3 ISA bridge", splits.UI, _PCI_IDS_H),
    "piix3-ide": PciIdent(0x8086, 0x7010, 0x0101, "PIIX3 IDE", splits.IDE, _PCI_IDS_H),
    "piix3-usb-uhci": PciIdent(0x8086, 0x7020, 0x0c03, "PIIX3 USB UHCI", splits.UI, _PCI_IDS_H),
    "PIIX4_PM": PciIdent(0x8086, 0x7113, 0x0680, "PIIX4 ACPI", splits.UI, _PCI_IDS_H),
    "xen-platform": PciIdent(0x5853, 0x0001, 0xff80, "Xen platform device", PLATFORM,
                             "QEMU hw/i386/xen/xen_platform.c"),
    "xen-pvdevice": PciIdent(0x5853, 0xc000, 0x0880, "Xen PV device", splits.UI,
                             "QEMU hw/i386/xen/xen_pvdevice.c (device-id=0xc000 from libxl)"),
    "cirrus-vga": PciIdent(0x1013, 0x00b8, 0x0300, "Cirrus VGA", splits.UI, _PCI_IDS_H),
    "VGA": PciIdent(0x1234, 0x1111, 0x0300, "standard VGA", splits.UI, "QEMU hw/display/vga-pci.c"),
    "qxl-vga": PciIdent(0x1b36, 0x0100, 0x0300, "QXL VGA", splits.UI, "QEMU hw/display/qxl.c"),
    "e1000": PciIdent(0x8086, 0x100e, 0x0200, "e1000 NIC", "nic", _PCI_IDS_H),
    "rtl8139": PciIdent(0x10ec, 0x8139, 0x0200, "RTL8139 NIC", "nic", _PCI_IDS_H),
    "ne2k_pci": PciIdent(0x10ec, 0x8029, 0x0200, "NE2000 PCI NIC", "nic", _PCI_IDS_H),
    "AC97": PciIdent(0x8086, 0x2415, 0x0401, "AC97 audio", splits.AUDIO, _PCI_IDS_H),
    "ES1370": PciIdent(0x1274, 0x5000, 0x0401, "ES1370 audio", splits.AUDIO, _PCI_IDS_H),
    "intel-hda": PciIdent(0x8086, 0x2668, 0x0403, "Intel HDA", splits.AUDIO, _PCI_IDS_H),
    "ich9-usb-ehci1": PciIdent(0x8086, 0x293a, 0x0c03, "ICH9 USB EHCI", splits.UI, _PCI_IDS_H),
    "ich9-usb-uhci1": PciIdent(0x8086, 0x2934, 0x0c03, "ICH9 USB UHCI 1", splits.UI, _PCI_IDS_H),
    "ich9-usb-uhci2": PciIdent(0x8086, 0x2935, 0x0c03, "ICH9 USB UHCI 2", splits.UI, _PCI_IDS_H),
    "ich9-usb-uhci3": PciIdent(0x8086, 0x2936, 0x0c03, "ICH9 USB UHCI 3", splits.UI, _PCI_IDS_H),
    "nec-usb-xhci": PciIdent(0x1033, 0x0194, 0x0c03, "NEC USB xHCI", splits.UI, _PCI_IDS_H),
    "ahci": PciIdent(0x8086, 0x2922, 0x0106, "ICH9 AHCI", splits.IDE, _PCI_IDS_H),
    "lsi53c895a": PciIdent(0x1000, 0x0012, 0x0100, "LSI SCSI", splits.IDE, _PCI_IDS_H),
    # Not a QEMU device: the framework's probe ioreq server (harness/probe_dm),
    # placed by with_probe(), never read from a QEMU command line.
    PROBE_TYPE: PciIdent(0x5853, 0xc0de, 0xff00, "xenhil probe function", PROBE_CLASS,
                         "harness/probe_dm/emulation.py"),
}

#: -device types that put nothing on the PCI bus (drives, USB/HDA children,
#: serial ports, virtio-serial ports...).
NON_PCI_DEVICES = frozenset({
    "ide-hd", "ide-cd", "ide-drive", "scsi-hd", "scsi-cd", "usb-tablet", "usb-mouse", "usb-kbd",
    "usb-redir", "usb-host", "hda-duplex", "hda-output", "hda-micro", "isa-serial",
    "virtserialport", "isa-debugcon", "xen-disk", "xen-net", "xen-console",
})

#: ``-vga TYPE`` -> device type (QEMU softmmu/vl.c vga_interfaces).
LEGACY_VGA = {"cirrus": "cirrus-vga", "std": "VGA", "qxl": "qxl-vga"}
#: ``-soundhw NAME`` -> device type (QEMU hw/audio/soundhw.c); ISA cards absent.
SOUNDHW = {"ac97": "AC97", "es1370": "ES1370", "hda": "intel-hda"}
NON_PCI_SOUNDHW = frozenset({"pcspk", "sb16", "adlib", "gus", "cs4231a"})
#: Model of a legacy ``-net nic`` without model= (old pc_piix.c pci_nic_init_nofail(nd, "e1000")).
LEGACY_NIC_DEFAULT_MODEL = "e1000"
#: Current QEMU: legacy NICs are created in pc_init1, before xenfv adds the
#: platform device; QEMU 1.x created the platform device first.  Only hand
#: made command lines use -net nic with qemu-xen.
LEGACY_NIC_BEFORE_PLATFORM = True
#: UNVERIFIED: -soundhw cards are created after machine init (after the
#: platform device) and before -device entries.
SOUNDHW_AFTER_PLATFORM = True
#: UNVERIFIED: without -nodefaults QEMU adds a default VGA in machine init:
#: cirrus before QEMU 2.2, std after.  libxl always passes -nodefaults.
DEFAULT_VGA_WITHOUT_NODEFAULTS = "cirrus"
#: Machine types with the i440FX/PIIX3 chipset; xenfv* adds the platform device.
I440FX_MACHINES = re.compile(r"^(xenfv|pc|pc-i440fx)([-.0-9a-z]*)$")

# options taking a value (so that values are never read as options)
_VALUE_OPTIONS = {
    "-machine", "-M", "-device", "-vga", "-net", "-netdev", "-soundhw", "-usbdevice", "-drive",
    "-serial", "-chardev", "-mon", "-name", "-vnc", "-display", "-boot", "-smp", "-m", "-kernel",
    "-initrd", "-append", "-xen-domid", "-trace", "-D", "-d", "-incoming", "-runas", "-chroot",
    "-spice", "-object", "-global", "-k", "-pidfile", "-msg", "-parallel", "-monitor", "-rtc",
}

# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedDevice:
    bdf: str                  # "00:03.0"
    vendor: int
    device: int
    class_code: int
    qemu_type: str            # "cirrus-vga"
    device_class: str         # ui, ide, audio, platform, nic:<vif id>
    model: str                # the model that must emulate (own) it
    source: str               # where it was derived from

    @property
    def ids(self) -> str:
        return f"{self.vendor:04x}:{self.device:04x}"

    def describe(self) -> str:
        return (f"{self.ids} class {self.class_code:04x} ({PCI_DEVICE_IDS[self.qemu_type].name}, "
                f"model {self.model})")


@dataclass(frozen=True)
class ExpectedTopology:
    devices: tuple[ExpectedDevice, ...]
    models: tuple[str, ...]
    platform_model: str | None
    notes: tuple[str, ...] = ()

    def by_bdf(self) -> dict[str, ExpectedDevice]:
        return {d.bdf: d for d in self.devices}

    def owner_of(self, bdf: str) -> str | None:
        d = self.by_bdf().get(bdf)
        return d.model if d else None

    def of_class(self, device_class: str) -> list[ExpectedDevice]:
        return [d for d in self.devices if d.device_class == device_class]

    def describe(self) -> str:
        return ", ".join(f"{d.bdf} {d.ids}" for d in sorted(self.devices, key=lambda d: d.bdf))


class TopologyInputError(TestBugError):
    """A command line the derivation cannot read (unknown device, bad addr=)."""

    help = ("Extend the tables in harness/checks/topology.py (PCI_DEVICE_IDS, NON_PCI_DEVICES) "
            "or pass the command lines as argv lists of the running QEMUs.")


# --------------------------------------------------------------------------
# Command-line parsing
# --------------------------------------------------------------------------


def argv_of(cmdline: str | Sequence[str]) -> list[str]:
    """An argv list from ``ps -o args=`` text (split on blanks: ps does not
    quote) or from a list (returned as is).  /proc/PID/cmdline text with NULs
    is split on NUL."""
    if isinstance(cmdline, str):
        if "\0" in cmdline:
            return [a for a in cmdline.split("\0") if a]
        return cmdline.split()
    return list(cmdline)


def _options(value: str) -> tuple[str, dict[str, str]]:
    """``"e1000,id=nic0,mac=00:16:3e:00:00:01"`` -> ("e1000", {"id": "nic0", ...})."""
    parts = value.split(",")
    head, opts = parts[0], {}
    for p in parts[1:]:
        k, _, v = p.partition("=")
        opts[k] = v
    if "=" in head:                       # "-machine type=xenfv,..." / "-net nic,model=.."
        k, _, v = head.partition("=")
        opts[k] = v
        head = v if k == "type" else head
    return head, opts


@dataclass
class _Cmdline:
    machine: str = "pc"
    machine_opts: dict = field(default_factory=dict)
    nodefaults: bool = False
    no_acpi: bool = False
    usb: bool = False
    nographic: bool = False
    legacy_vga: list[tuple[str, str]] = field(default_factory=list)     # (type, arg)
    legacy_nics: list[tuple[str, dict, str]] = field(default_factory=list)
    soundhw: list[tuple[str, str]] = field(default_factory=list)
    devices: list[tuple[str, dict, str]] = field(default_factory=list)  # (type, opts, arg)


def _parse_cmdline(argv: Sequence[str], model: str) -> _Cmdline:
    c = _Cmdline()
    i = 0
    while i < len(argv):
        arg = argv[i]
        opt = "-" + arg.lstrip("-") if arg.startswith("-") else None
        value = argv[i + 1] if opt in _VALUE_OPTIONS and i + 1 < len(argv) else None
        i += 2 if value is not None else 1
        if opt in ("-machine", "-M"):
            c.machine, c.machine_opts = _options(value)
        elif opt == "-nodefaults":
            c.nodefaults = True
        elif opt == "-no-acpi":
            c.no_acpi = True
        elif opt == "-usb":
            c.usb = True
        elif opt == "-nographic":
            c.nographic = True
        elif opt == "-vga":
            if value != "none":
                if value not in LEGACY_VGA:
                    raise TopologyInputError(f"model {model}: -vga {value} is not in LEGACY_VGA")
                c.legacy_vga.append((LEGACY_VGA[value], f"-vga {value}"))
        elif opt == "-net":
            kind, opts = _options(value)
            if kind == "nic":
                c.legacy_nics.append((opts.get("model", LEGACY_NIC_DEFAULT_MODEL), opts, f"-net {value}"))
        elif opt == "-soundhw":
            for name in value.split(","):
                if name in SOUNDHW:
                    c.soundhw.append((SOUNDHW[name], f"-soundhw {value}"))
                elif name not in NON_PCI_SOUNDHW:
                    raise TopologyInputError(f"model {model}: -soundhw {name} is not in SOUNDHW")
        elif opt == "-device":
            dtype, opts = _options(value)
            if dtype in PCI_DEVICE_IDS:
                c.devices.append((dtype, opts, f"-device {value}"))
            elif dtype not in NON_PCI_DEVICES:
                raise TopologyInputError(
                    f"model {model}: unknown device type in -device {value}: is it a PCI device?")
    if c.machine_opts.get("acpi") in ("off", "no", "false"):
        c.no_acpi = True
    if c.machine_opts.get("usb") in ("on", "yes", "true"):
        c.usb = True
    if not I440FX_MACHINES.match(c.machine):
        raise TopologyInputError(f"model {model}: machine {c.machine!r} is not an i440FX machine "
                                 "(xenfv or pc): its layout is not modelled")
    return c


def _parse_addr(text: str, model: str) -> int:
    """QEMU addr= (``4``, ``0x4``, ``04.0``, ``0x1d.0x7``) -> devfn."""
    slot, _, fn = text.partition(".")
    try:
        s, f = int(slot, 16), int(fn, 16) if fn else 0
    except ValueError:
        raise TopologyInputError(f"model {model}: bad PCI addr={text}") from None
    if not (0 <= s < 32 and 0 <= f < 8):
        raise TopologyInputError(f"model {model}: addr={text} out of range")
    return s * 8 + f


class _Bus:
    """One QEMU's bus 0: devfn -> (type, source)."""

    def __init__(self, model: str):
        self.model = model
        self.slots: dict[int, tuple[str, str]] = {}

    def place(self, qemu_type: str, source: str, devfn: int | None = None) -> int:
        if devfn is None:
            devfn = next((d for d in range(0, 256, 8) if d not in self.slots), None)
            if devfn is None:
                raise TopologyInputError(f"model {self.model}: no free PCI slot for {source}")
        elif devfn in self.slots:
            raise TopologyInputError(f"model {self.model}: {source} and {self.slots[devfn][1]} "
                                     f"both at {sbdf_to_str(devfn)} (QEMU would refuse to start)")
        self.slots[devfn] = (qemu_type, source)
        return devfn


def _layout(c: _Cmdline, model: str) -> list[tuple[str, str, int, bool, dict]]:
    """Devices one QEMU creates: (type, source, devfn, explicit, opts)."""
    bus = _Bus(model)
    out: list[tuple[str, str, int, bool, dict]] = []
    machine = f"-machine {c.machine} of model {model}"

    def add(qtype: str, source: str, explicit: bool, opts: dict | None = None, devfn: int | None = None):
        if opts and "addr" in opts:
            devfn = _parse_addr(opts["addr"], model)
        out.append((qtype, source, bus.place(qtype, source, devfn), explicit, opts or {}))

    add("i440FX", machine, False, devfn=0x00)
    add("PIIX3", machine, False, devfn=0x08)
    add("piix3-ide", machine, False, devfn=0x09)
    if c.usb:
        add("piix3-usb-uhci", f"-usb of model {model}", False, devfn=0x0a)
    if not c.no_acpi:
        add("PIIX4_PM", machine, False, devfn=0x0b)
    vgas = list(c.legacy_vga)
    has_display_device = any(PCI_DEVICE_IDS[t].class_code >> 8 == 0x03 for t, _, _ in c.devices)
    if not c.nodefaults and not vgas and not has_display_device and not c.nographic:
        vgas.append((LEGACY_VGA[DEFAULT_VGA_WITHOUT_NODEFAULTS],
                     f"QEMU's default VGA of model {model} (no -nodefaults; UNVERIFIED type)"))
    for qtype, source in vgas:
        add(qtype, source, True)
    platform = c.machine.startswith("xenfv")
    nics_first = LEGACY_NIC_BEFORE_PLATFORM
    if not nics_first and platform:
        add("xen-platform", machine, False)
    for qtype, opts, source in c.legacy_nics:
        if qtype not in PCI_DEVICE_IDS:
            raise TopologyInputError(f"model {model}: NIC model {qtype} in {source} is not in PCI_DEVICE_IDS")
        add(qtype, source, True, opts)
    if nics_first and platform:
        add("xen-platform", machine, False)
    if SOUNDHW_AFTER_PLATFORM:
        for qtype, source in c.soundhw:
            add(qtype, source, True)
    for qtype, opts, source in c.devices:
        add(qtype, source, True, opts)
    return out


# --------------------------------------------------------------------------
# The derivation
# --------------------------------------------------------------------------

_NIC_ID = re.compile(r"^nic(\d+)$")


def _nic_class(opts: dict, guest_config, model: str, source: str) -> str:
    """nic:<vif id> of a NIC -device: by MAC against the guest's vifs, else by
    libxl's ``id=nic<devid>`` (devid = position in the vif list)."""
    vifs = list(getattr(guest_config, "vifs", []) or [])
    mac = opts.get("mac", "").lower()
    for v in vifs:
        if v.mac and v.mac.lower() == mac:
            return splits.NIC_PREFIX + v.id
    m = _NIC_ID.match(opts.get("id", ""))
    if m and int(m.group(1)) < len(vifs):
        return splits.NIC_PREFIX + vifs[int(m.group(1))].id
    if len(vifs) == 1:
        return splits.NIC_PREFIX + vifs[0].id
    if not vifs:
        return splits.NIC_PREFIX + (opts.get("id") or "unknown")
    raise TopologyInputError(f"model {model}: cannot tell which vif {source} is (no matching mac=, "
                             f"no id=nicN): give the guest's vifs MAC addresses")


def _owner(split: Split, device_class: str, platform_owner: str | None) -> str | None:
    if device_class == PLATFORM:
        return platform_owner
    if device_class == splits.IDE and split.owner_of(splits.IDE) is None:
        # PIIX3's IDE function exists even without disks; with no ide model the
        # south bridge's owner (ui) keeps it.  CHOICE, the series is silent.
        return split.owner_of(splits.UI)
    return split.owner_of(device_class)


def default_platform_owner(split: Split) -> str:
    """The one model of the single split; otherwise the ui model (CHOICE: the
    platform device sits on the root bus that ui owns; which model the series
    makes emulate it is an open question -- pass the catalog's answer when known)."""
    return split.owner_of(splits.UI) or split.model_names[0]


def expected_topology(split: Split, qemu_cmdlines: Mapping[str, str | Sequence[str]],
                      guest_config=None, *, platform_owner: str | None = None,
                      evidence: Evidence | None = None) -> ExpectedTopology:
    """The PCI functions the guest must see, each with the model that owns it.

    ``qemu_cmdlines``: model name -> argv (or ``ps -o args=`` text) of that
    model's running QEMU.  For the single split the one key may be any name;
    it is reported as the single model ("0").  ``guest_config``: an
    ``HvmGuest`` (its vifs map NIC devices to ``nic:<vif id>`` classes and
    tell which NICs must exist).  ``platform_owner``: the model expected to
    emulate the Xen platform device (default: ``default_platform_owner``).

    Raises CheckFailed when the command lines contradict the split (a device
    on the command line of a model that does not own its class, a vif no
    model creates, two models' devices on one BDF), TopologyInputError when a
    command line cannot be interpreted.
    """
    evidence = dict(evidence or {})
    for model, cmd in qemu_cmdlines.items():
        evidence.setdefault(f"command line of model {model}", " ".join(argv_of(cmd))[:2000])
    names = list(split.model_names)
    cmdlines = dict(qemu_cmdlines)
    if split.is_single and len(cmdlines) == 1:
        cmdlines = {names[0]: next(iter(cmdlines.values()))}
    unknown = sorted(set(cmdlines) - set(names))
    missing = sorted(set(names) - set(cmdlines))
    if unknown or missing:
        raise TopologyInputError(f"command lines given for models {sorted(cmdlines)} but split "
                                 f"{split.id} has models {names}",
                                 help="pass one command line per model of the split, keyed by model name")
    platform_owner = platform_owner or default_platform_owner(split)
    if platform_owner not in names:
        raise TopologyInputError(f"platform owner {platform_owner!r} is not a model of split {split.id}")

    problems: list[Mismatch] = []
    placed: dict[int, ExpectedDevice] = {}
    notes: list[str] = []
    explicit_classes: dict[str, list[str]] = {}
    for model in names:
        parsed = _parse_cmdline(argv_of(cmdlines[model]), model)
        if not parsed.nodefaults:
            notes.append(f"model {model}: no -nodefaults; QEMU's default devices were assumed")
        for qtype, source, devfn, explicit, opts in _layout(parsed, model):
            ident = PCI_DEVICE_IDS[qtype]
            dclass = _nic_class(opts, guest_config, model, source) if ident.role == "nic" else ident.role
            owner = _owner(split, dclass, platform_owner)
            if explicit:
                explicit_classes.setdefault(dclass, []).append(model)
                if owner != model:
                    problems.append(Mismatch(
                        f"{ident.name} ({source})",
                        f"only on the command line of {owner or 'no model'} (split {split.id} gives "
                        f"{dclass} to {owner or 'no model'})",
                        f"on the command line of model {model}"))
                    continue
            elif owner != model:
                continue  # machine-made copy in a QEMU that does not register it
            dev = ExpectedDevice(sbdf_to_str(devfn), ident.vendor, ident.device, ident.class_code,
                                 qtype, dclass, model, source)
            if devfn in placed:
                other = placed[devfn]
                problems.append(Mismatch(
                    dev.bdf, "one device per BDF across all models",
                    f"{other.describe()} from {other.source} and {dev.describe()} from {dev.source}"))
                continue
            placed[devfn] = dev
    for vif in getattr(guest_config, "vifs", []) or []:
        dclass = splits.NIC_PREFIX + vif.id
        owner = split.owner_of(dclass)
        if owner is not None and dclass not in explicit_classes:
            problems.append(Mismatch(f"NIC {vif.id}", f"a {vif.model} -device on the command line "
                                                      f"of model {owner}", "no model's command line has it"))
    fail_if(problems, f"PCI topology of split {split.id} from the device-model command lines",
            expected=f"the command lines agree with split {split.id}", evidence=evidence)
    devices = tuple(sorted(placed.values(), key=lambda d: (d.bdf)))
    return ExpectedTopology(devices, tuple(names), platform_owner, tuple(notes))


def with_probe(topology: ExpectedTopology, settings, evidence: Evidence | None = None) -> ExpectedTopology:
    """``topology`` plus the probe's PCI function (``settings``: a
    :class:`harness.probe_dm.companion.ProbeSettings`), owned by model "probe".
    A QEMU device on the probe's BDF is a contradiction in the split's set-up."""
    from xenhil.harness.probe_dm.companion import PROBE_MODEL
    bdf = sbdf_to_str(str_to_sbdf(settings.bdf))
    clash = topology.by_bdf().get(bdf)
    if clash is not None:
        fail_if([Mismatch(bdf, f"free for the probe ({settings.vendor:04x}:{settings.device:04x})",
                          f"taken by {clash.describe()} from {clash.source}")],
                "PCI topology with the probe", expected="the probe's BDF free of QEMU devices",
                evidence=dict(evidence or {}),
                help="give the probe another bdf in fixtures/splits.yaml")
    probe = ExpectedDevice(bdf, settings.vendor, settings.device, settings.class_code,
                           PROBE_TYPE, PROBE_CLASS, PROBE_MODEL, "the catalog's probe settings")
    devices = tuple(sorted((*topology.devices, probe), key=lambda d: d.bdf))
    return ExpectedTopology(devices, (*topology.models, PROBE_MODEL), topology.platform_model,
                            topology.notes)


# --------------------------------------------------------------------------
# Reading the command lines on a host
# --------------------------------------------------------------------------

#: How a model's QEMU shows which model it is: our port of the series
#: (lab/series/device-models) starts model i of ``device_models`` with
#: ``-accel xen,dm-id=i,dm-classes=...`` (recorded:
#: tests/data/recorded/qemu_cmdlines_qnet_qall_port_417_emulated.txt).  Model
#: names are not used: the guest's name (``-name xh-qnet-qall``) and its log
#: paths carry every model's name.
_DM_ID = re.compile(r"(?:^|,)dm-id=(\d+)(?:,|$)")


def model_index(argv: Sequence[str]) -> int | None:
    """The ``dm-id`` of a device model's command line (None: not a split model)."""
    for flag, value in zip(argv, argv[1:]):
        if flag == "-accel" and value.split(",", 1)[0] == "xen":
            m = _DM_ID.search(value)
            if m:
                return int(m.group(1))
    return None


def identify_models(cmdlines: Sequence[Sequence[str]], split: Split) -> dict[str, list[str]]:
    """Map the device-model processes of one domain to the split's models."""
    names = list(split.model_names)
    if split.is_single:
        if len(cmdlines) != 1:
            raise CheckFailed(
                "one device model per model of the split",
                expected=f"1 QEMU process for split {split.id}",
                seen=f"{len(cmdlines)} processes", evidence={"processes": quote_cmds(cmdlines)})
        return {names[0]: list(cmdlines[0])}
    found: dict[str, list[str]] = {}
    for argv in cmdlines:
        index = model_index(argv)
        if index is None or index >= len(names):
            raise CheckFailed(
                "one device model per model of the split",
                expected=f"-accel xen,dm-id=0..{len(names) - 1} in each QEMU of split {split.id}",
                seen=f"dm-id {index} in `{' '.join(argv)[:300]}`",
                evidence={"processes": quote_cmds(cmdlines)})
        found[names[index]] = list(argv)
    if sorted(found) != sorted(names) or len(cmdlines) != len(names):
        raise CheckFailed("one device model per model of the split",
                          expected=f"one QEMU for each of {names}",
                          seen=f"QEMUs for {sorted(found)} ({len(cmdlines)} processes)",
                          evidence={"processes": quote_cmds(cmdlines)})
    return found


def quote_cmds(cmdlines: Sequence[Sequence[str]]) -> str:
    return " | ".join(" ".join(a)[:400] for a in cmdlines) or "(no process)"


def read_qemu_cmdlines(guest) -> dict[str, list[str]]:
    """The argv of each device model of ``guest`` (by pid, from /proc/PID/cmdline,
    which keeps arguments with blanks intact), keyed by the split's model names."""
    pids = guest.xl.qemu_pids(guest.domid)
    cmdlines = []
    for pid in pids:
        out = guest.host.ssh.run(f"tr '\\0' '\\n' < /proc/{int(pid)}/cmdline", timeout=30, check=True)
        cmdlines.append([line for line in out.stdout.split("\n") if line != ""])
    return identify_models(cmdlines, guest.config.split)


__all__ = ["ExpectedDevice", "ExpectedTopology", "PCI_DEVICE_IDS", "PLATFORM", "TopologyInputError",
           "argv_of", "default_platform_owner", "expected_topology", "identify_models",
           "read_qemu_cmdlines"]
