"""The test guest: the one description of the HVM guest xenhil boots.

The suites (``fixtures/guest.py``), the virtual lab's smoke and the other
real-Xen tests, and the benchmarks all take their guest from
:func:`guest_model`, an :class:`~harness.xen.xlconfig.HvmGuest`, so its xl
config has one writer (:meth:`HvmGuest.render`) with one set of quoting
rules, and a host quirk reaches every guest the same way:

- the guest kit (``harness.lab.virtual.guestkit``, installed in dom0 at
  :data:`GUEST_KIT_DIR`) booted directly: Debian's kernel and the kit's
  initramfs, ``console=ttyS0,115200 xen_emul_unplug=never`` (Debian's kernel
  would otherwise unplug the emulated NIC and disk through the Xen platform
  device, hiding them from the checks), plus the host's kernel options
  (``HostProfile.guest_cmdline_options``: ``pci=noearly loglevel=4`` on an
  emulated host, none on real hardware);
- 256 MiB, one vCPU, a pty serial console, one e1000 on xenbr0 per vif id of
  the split, one raw IDE disk when a disk is given;
- QEMU trace events (:data:`TRACE_EVENTS` unless the caller names others);
- ``on_crash``/``on_reboot`` preserved;
- the host's xl settings (``HostProfile.guest_xl_settings``: ``tsc_mode="native"``
  on an emulated host) merged last, listed as comments in the render.

This module never imports pytest (``harness/`` is the library; only
``harness/plugin.py`` is pytest glue).
"""
from __future__ import annotations

from typing import Sequence

from xenhil.harness.lab.virtual.guestkit import GUEST_KIT_DIR
from xenhil.harness.lab.profile import HostProfile
from xenhil.harness.xen.catalog import CatalogSplit
from xenhil.harness.xen.xlconfig import DirectKernelBoot, Disk, HvmGuest, Vif

# What the guest's kernel always gets (host options are appended).
GUEST_CMDLINE = "console=ttyS0,115200 xen_emul_unplug=never"
# QEMU trace events the checks read from /var/log/xen/qemu-dm-<name>.log.
# handle_ioreq alone gives every request's type, address and size (routing,
# invalidates); its _read/_write and the cpu_ioreq_* events repeat the same
# requests and made a guest boot under emulation several times slower.
# Never xen_map_cache for a whole boot: millions of lines, the guest stalls.
# xen_remap_bucket is its miss only (a bucket mapped anew: a few hundred lines
# a boot, and again after each invalidate emptied the cache), which is how the
# map-cache check sees that an invalidate really emptied a model's cache.
TRACE_EVENTS = ("handle_ioreq", "xen_ioreq_server*", "xen_map_pcidev", "xen_map_portio_range",
                "xen_map_mmio_range", "xen_platform_log", "xen_remap_bucket")
MEMORY_MIB = 256
NIC_MODEL = "e1000"
BRIDGE = "xenbr0"


def guest_cmdline(profile: HostProfile, name: str | None = None,
                  address: str | None = None) -> str:
    """The guest kernel's command line on a host of this profile; with
    ``address``, the guest kit's ``xenhil.addr=`` and ``xenhil.name=``."""
    words = [GUEST_CMDLINE, *profile.guest_cmdline_options]
    if address is not None:
        words += [f"xenhil.addr={address}", f"xenhil.name={name}"]
    return " ".join(words)


def guest_model(name: str, entry: CatalogSplit, profile: HostProfile,
                disk: str | None = None, *, trace_events: Sequence[str] = TRACE_EVENTS,
                device_model_args: Sequence[str] = (), address: str | None = None) -> HvmGuest:
    """The test guest ``name`` for the catalog split ``entry`` on a host of
    this ``profile`` (its ``HostSpec.profile``), checked.

    ``disk``: the raw image on the host for its IDE disk (``hda``), or None for
    a guest without a disk (the suites' checks write through it; a guest
    that only has to boot does not need one).  ``trace_events``: the QEMU
    trace events to enable (``()``: none).  ``device_model_args``: more QEMU
    arguments after the trace's (e.g. ``-D FILE`` for the trace's own file).
    ``address``: the guest's IPv4 address on dom0's bridge (the kit's init
    takes it from ``xenhil.addr=``; None: the kit's GUEST_ADDRESS), given
    with ``xenhil.name=`` so that a connection can tell which guest answers
    (harness.guest_ssh).

    Raises :class:`~harness.xen.xlconfig.XlConfigError` naming every field that
    cannot be rendered (e.g. a name xl would not take)."""
    args: list[str] = []
    for event in trace_events:
        args += ["-trace", f"enable={event}"]
    args += list(device_model_args)
    guest = HvmGuest(
        name=name, memory=MEMORY_MIB, maxmem=MEMORY_MIB, vcpus=1,
        boot=DirectKernelBoot(f"{GUEST_KIT_DIR}/vmlinuz", f"{GUEST_KIT_DIR}/initrd.img",
                              guest_cmdline(profile, name, address)),
        vifs=[Vif(id=v, model=NIC_MODEL, bridge=BRIDGE) for v in entry.guest_vifs],
        disks=[Disk(target=disk, vdev="hda", format="raw", access="rw")] if disk is not None else [],
        serial="pty", device_model_args=args, split=entry.split,
        # Xen turns a guest's triple fault into a reboot ("HVM shutdown action
        # 1") and xl would quietly start the guest again under a new domid:
        # the suites never reboot their guest, so keep it for the evidence.
        on_crash="preserve", on_reboot="preserve")
    return guest.apply_quirks(profile.guest_xl_settings).check()
