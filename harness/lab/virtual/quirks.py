"""Every setting the virtual lab needs because its hosts are emulated.

One place, each setting next to the reason it exists.  A virtual host is
QEMU with the TCG software CPU (no usable KVM on the lab machines), running
real Xen 4.17 with a Debian dom0; HVM guests then run under Xen's SVM/NPT on
top of QEMU's emulated SVM.  See docs/xen-ioreq-facts.md, section 7.

Nothing here is a fixed property of Xen: a real host never needs these.
The layers that drive hosts reach them through the host's profile
(harness/lab/profile.py, ``HostSpec.profile``), which applies them only when
the host declares ``emulated: true``; the virtual lab's own launcher and
image builder use them directly.
"""
from __future__ import annotations

import os
import re
from typing import Mapping

def is_emulated(capabilities: Mapping[str, object]) -> bool:
    """The host declares ``emulated: true`` (the inventory schema makes it a
    boolean): every setting below applies only then."""
    return capabilities.get("emulated") is True


# --- the QEMU that plays the physical machine ----------------------------

QEMU_BINARY = "qemu-system-x86_64"

# QEMU 10.0 (Debian 12's bookworm-backports; scripts/setup installs it), not
# bookworm's own 7.2.  With 7.2 as the physical machine, HVM guests
# triple-faulted in about a third of the boots with two guests booting at
# once (issue 19: 2 of 6 even with every other quirk here), and Xen's dumps
# put the cause inside 7.2's emulation of VMRUN/#VMEXIT: one guest's VMCB
# held Xen's own state (tests/data/recorded/
# xl_dmesg_triple_fault_host_state_in_vmcb_417_emulated.txt).  10.0 carries
# two and a half years of fixes to TCG's SVM; with it and shadow paging
# (guests' "hap" below), the same benchmark (two guests booting at once,
# benchmarks/bench_lab_stability.py --concurrent 2 --set hap=0, label
# qemu10-shadow-c2-b in benchmarks/results/lab_stability.json): 20 of 20
# boots ok, no crash, stall or hang, where 7.2 crashed 2 of 6; boot time
# p50 143 s (114-152 s on a quiet machine, up to 435 s while other work
# loaded it).
QEMU_MIN_VERSION = (10, 0)
QEMU_FIX = ("run scripts/setup, which installs qemu-system-x86 from bookworm-backports "
            "(apt-get install -t bookworm-backports qemu-system-x86 qemu-utils)")


def qemu_version(text: str) -> tuple[int, int] | None:
    """(major, minor) from `qemu-system-x86_64 --version` output, None when
    the text does not say."""
    match = re.search(r"QEMU emulator version (\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


# i440FX "pc": SeaBIOS boots GRUB from the virtio disk (the real firmware ->
# bootloader -> Xen path) and Xen 4.17 knows every device on it.
MACHINE = "pc"

# TCG: KVM on these machines cannot run an unmodified guest, and the nested
# SVM Xen needs is only offered by QEMU's software CPU.  tb-size=256 (MiB)
# caps the translation-block cache: the default (1 GiB on 64-bit hosts)
# made a host cost ~4.4 GB RSS; with 256 MiB a host with dom0 up and a guest
# running measured 2.7-2.8 GB RSS.  benchmarks/bench_virtual_lab.py measures it.
# XENHIL_VLAB_ACCEL overrides it for experiments (e.g. "tcg": default size).
ACCEL = os.environ.get("XENHIL_VLAB_ACCEL", "tcg,tb-size=256")

# "max" exposes SVM, which Xen needs for HVM guests (it also offers nested
# paging, which the guests do not use: see "hap" below).  -smap: the
# configuration first seen working here (docs/xen-ioreq-facts.md section 7) turns SMAP
# off; Xen's SMAP use under TCG is the suspect.  UNVERIFIED that SMAP on
# breaks: keep it off until a benchmark run shows otherwise.  The same holds
# for AVX and PKU below on QEMU 10.0: hidden as verified on 7.2.
#
# No AVX: QEMU 7.2 TCG's new AVX/AVX2 emulation does not survive Xen's
# vector-state context switches under nested SVM.  With AVX exposed, dom0's
# processes saw corrupted vector registers whenever an HVM guest ran: sshd
# failed its MAC checks ("incorrect signature", "Bad packet length") and
# `cat`/`python3` segfaulted (glibc and OpenSSL pick AVX2 code paths).  With
# the AVX family hidden, 60 of 60 SSH round trips during a guest's boot
# succeeded where every earlier run broke 70-130 s after `xl create`.
#
# No PKU either: with AVX hidden, the only extended XSAVE component left was
# PKRU (guests printed "Enabled xstate features 0x203"), which HVM guests use
# and PV dom0 does not, so Xen switches XCR0 and XSAVE layouts on every
# guest/dom0 context switch.  With it, dom0 processes still segfaulted now and
# then while a guest ran (`xl` twice in a minute in dom0's kernel log), `xl
# console` died mid-output and guests triple-faulted early in boot.  Same
# family of failure as AVX; hidden until shown harmless.
#
# Both were symptoms: the vector state was lost by Xen's lazy FPU switching
# under this emulation (XEN_CMDLINE_EMULATED below has the measurement and
# the fix, eager switching).  AVX and PKU stay hidden, as verified working;
# UNVERIFIED whether eager switching alone would do with them exposed.
# XENHIL_VLAB_CPU overrides it for experiments.
CPU = os.environ.get("XENHIL_VLAB_CPU", "max,-smap,-avx,-avx2,-avx512f,-fma,-f16c,-vaes,"
                                        "-vpclmulqdq,-avx-vnni,-pku")

# Two vCPUs: dom0 and the guest's device model each get one; more only
# slows TCG on a 2-core machine (one host thread per vCPU, MTTCG).
SMP = 2

# 3 GiB: Xen + dom0 (dom0_mem=1024M) + room for a few 256 MiB HVM guests.
MEMORY_MB = 3072

# Disk on virtio-blk: SeaBIOS boots from it and it is several times faster
# than emulated IDE under TCG.
DISK_INTERFACE = "virtio"
# NIC: e1000, the model of the first setup seen working (docs/xen-ioreq-facts.md section
# 7).  (The SSH breakage once blamed on the NIC was the AVX problem, see CPU.)
NIC_MODEL = "e1000"

# --- what Xen and dom0 are told (the GRUB entry on the dom0 disk) --------

# What every Xen booted on an emulated host gets on its command line, the
# image's own entry below and every build the suites provision
# (harness.xen.build.as_booted_on):
#
# spec-ctrl=eager-fpu: Xen saves and restores a vCPU's vector registers at
#   every context switch instead of lazily (CR0.TS and a #NM trap when the
#   vCPU next touches them).  On this "max" CPU (AMD vendor) Xen 4.17 picks
#   lazy switching, and under QEMU 7.2's TCG with nested SVM the lazy scheme
#   loses state: dom0 processes find other contexts' XMM registers in theirs
#   whenever an HVM guest runs.  Measured with a dom0 program that holds a
#   pattern in xmm0-15 across a busy loop and checks it (tests/support/
#   xmm_hold.c; two copies for 240 s while guests boot): lazy, 500 of 82 276
#   rounds came back with all 16 registers replaced (zeros, the other copy's
#   pattern, ASCII of a path); eager, 0 of 91 250.  Without a guest, 0 either
#   way.  This is what made dom0's xl, device models, udev and awk crash
#   (harness.xen.dom0_crashes) and CI's smoke fail with xl's child aborting
#   on a corrupted heap.  Eager switching is Xen's default on Intel
#   and an option it supports everywhere; real hosts keep their default.
#
# sched=credit: Xen 4.17's default scheduler, credit2, stranded dom0 here.
#   Caught by the stability benchmark (benchmarks/bench_lab_stability.py,
#   two guests booting at once): dom0 stopped answering SSH for good while
#   guests booted.  Xen's own state, read over the serial console ('r', 'q'
#   and 'a' debug keys, recorded in tests/data/recorded/
#   xen_debug_keys_rqa_dom0_stranded_credit2_417_emulated.txt), showed dom0's
#   vCPU1 runnable in credit2's run queue while both physical CPUs sat idle
#   ("idlers: 2, tickled: 0"), and dom0's vCPU0 blocked in SCHEDOP_poll (a
#   PV spinlock waiting for vCPU1 to release it): a lost wake-up that
#   nothing ever repairs, since no CPU runs the scheduler again.  credit1
#   is Xen's other general-purpose scheduler (Xen's default before 4.12).
#   Before (credit2, two guests booting at once, the machine loaded by other
#   work): of 4 boots, 1 guest triple fault and this dom0 hang, which took 2
#   more.  After (credit1 and GUEST_CMDLINE_EMULATED below, same load): 6 of
#   6 boots ok; too few to call it fixed (see issue 19's note).  Real hosts
#   keep credit2.
XEN_CMDLINE_EMULATED = ("spec-ctrl=eager-fpu", "sched=credit")

# console=com1: Xen's console (and through it dom0's hvc0) on the one
#   serial port, which the lab exposes as a TCP socket.
# dom0_mem fixed: no ballooning of dom0 (slow under TCG; guests get the rest).
# loglvl/guest_loglvl=all: the rangeset dumps and ioreq messages the checks
#   parse are printed at debug level.
# noreboot: a crash stays on the console for the transcript instead of a
#   silent reboot; the lab power-cycles hosts through their BMC instead.
# + XEN_CMDLINE_EMULATED: above.
XEN_CMDLINE = " ".join(("console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M "
                        "loglvl=all guest_loglvl=all noreboot", *XEN_CMDLINE_EMULATED))

# hvc0 is Xen's console for dom0 (-> com1); earlyprintk=xen shows the dom0
# kernel's first messages before the hvc driver is up.
DOM0_CMDLINE = "root=/dev/vda1 ro console=hvc0 earlyprintk=xen"


# --- timeouts that are long because TCG is slow ---------------------------

# Power on -> dom0 sshd answering.  Seen: 60-90 s on an idle 2-core machine,
# twice that with two hosts or other work running.
DOM0_BOOT_TIMEOUT_S = 420.0

# `xl create` -> guest shell answering on `xl console`.  Seen: 3.5-5 minutes
# on an idle machine (the guest kernel's PCI and ACPI probing goes through
# two levels of emulation), much more with a second host running.
GUEST_BOOT_TIMEOUT_S = 900.0


# Latency: every timed access is a VM exit that TCG emulates, and for a
# device model a round trip through dom0 as well.  Measured on the virtual
# lab: 100 000 reads of the PIT (the baseline, never leaving Xen) took over
# 3 minutes, so the suites' default of 100 000 per server would take most of
# an hour per split.  Emulated hosts default to 5 000 samples per server
# (the regression test needs hundreds); --latency-samples still overrides.
LATENCY_SAMPLES_EMULATED = 5_000


# Latency verdicts (harness.results.latency): the smallest growth that counts
# on an emulated host before its own history is long enough to show its
# spread.  Recorded on the virtual lab (artifacts/results.sqlite, three main
# jobs of 2026-11-30/12-01 on one host, ports measured one after another):
# QEMU's cost above the PIT on single+probe 457, 628 and 736 us (deviations
# from their median up to 27 %), the qall model's on qnet+qall 559, 620 and
# 3 618 us (a run with a build going on beside it), while the probe's cost
# over QEMU's, in the same guests, was 1.36, 1.44 and 1.55 (up to 8 %).
# A whole run is slower or faster together; one server's share holds.  So a
# cost must grow by more than 100 % (the machine's slow windows, with room
# for one like the 3 618 us run) and a share by more than 15 % (twice the
# spread seen) to count.  Interleaved (the ports read in turn, as now), the
# first main job measured QEMU at 1 033 us and the probe at 1 341 us (share
# 1.30): every round trip wakes its server from sleep.  The delay mutant
# (lab/mutants) adds 400 us to the probe: +30 % of its cost, and of its share.
LATENCY_COST_SPREAD_EMULATED = 1.00
LATENCY_SHARE_SPREAD_EMULATED = 0.15


# A virtual host's emulator contended for its machine's CPUs
# (harness.lab.virtual.contention): its threads waited in the run queue
# more than this many seconds per second of a measurement.  Measured on a
# 2-core machine (2026-12-02) with one virtual host (2 vCPUs) booting a
# guest or running the catalog's tests: 0.04-0.19 s/s alone, 0.15-0.21 in
# the seven latency measurements of a qualification (q20261202T153502-0c21);
# 0.87 s/s with two busy loops beside it, niced to 19 (nice does not save
# it: the emulator wants more than one core).  A fast-layer run beside the catalog
# then made one QEMU round trip 5x slower (harness.lab.virtual.contention).
EMULATOR_CPU_WAIT_CONTENDED = 0.40


def qemu_machine_args() -> list[str]:
    """The machine part of the QEMU command line (no disk/serial/network)."""
    return ["-machine", MACHINE, "-accel", ACCEL, "-cpu", CPU,
            "-smp", str(SMP), "-m", f"{MEMORY_MB}M"]


# --- HVM guests on an emulated host ---------------------------------------

EMULATED_GUEST_XL_SETTINGS: dict[str, object] = {
    # With the default (emulated) TSC the guest kernel takes a general
    # protection fault on RDTSCP under this nested emulation; native TSC
    # passes the (emulated) host TSC through and the guest boots.
    "tsc_mode": "native",
    # Shadow paging instead of HAP (nested paging); GUEST_HAP_REASON says why.
    "hap": 0,
}

GUEST_HAP_REASON = """\
QEMU 10.0's emulated nested paging does not carry a Linux guest through its
early boot: with HAP every guest stopped in the kernel's decompressor (last
console line "KASLR disabled" with nokaslr), its only vCPU halted with
interrupts off, which Xen ends as a power-off with no message (2026-11-30:
13 of 13 boots, among them with NPT limited to 4 KiB pages, without SMEP,
without 1 GiB guest pages, without the TSC quirk; evidence in tests/data/
recorded/xl_guest_poweroff_hap_qemu10_417_emulated.txt).  With hap=0 Xen
keeps shadow page tables and the nested ones are not used: the same guest
boots (20 of 20, see QEMU_MIN_VERSION).

"""


# Kernel options for the test guest on an emulated host.  Every port or
# MMIO access a device model serves is an ioreq round trip through dom0,
# which costs milliseconds under TCG, and the guests' crashes on this lab
# all came at the end of one (Xen's register dump puts the guest right after
# an `out` to the UART, 0x3f8, and after an `in` from 0xcfc in
# read_pci_config: tests/data/recorded/xl_dmesg_*triple_fault*): fewer round
# trips per boot, fewer crashes and faster
# boots.  A recorded boot (tests/data/recorded/qemu-dm-g1_trace_*) made
# 111 418 ioreqs, 65 000 of them for the serial console and 18 845 for 0xcf8:
#
# pci=noearly: skips the kernel's "poor man's PCI discovery" before the PCI
#   subsystem, above all the AGP/GART aperture search of AMD family 0xf
#   CPUs (QEMU 7.2's "max" CPU reported family 15 model 107; 10.0's
#   reports family 6 model 6, which the search skips): 8192 probes of
#   bus:slot, each an outl to 0xcf8 for QEMU, 70 s of the guest's boot
#   with the console silent (long enough for the harness to take the relay
#   for stuck).  An HVM guest has no GART; its PCI devices are found later
#   by the regular PCI scan as before.
# loglevel=4: the kernel prints only errors and worse to the console
#   (ttyS0, two ioreqs a character); the whole log stays in the guest's
#   dmesg, which evidence reads.
GUEST_CMDLINE_EMULATED = ("pci=noearly", "loglevel=4")

# What the quirks above did NOT fix on QEMU 7.2, the reason the lab moved to
# 10.0 (QEMU_MIN_VERSION) (issue 19, measured 2026-11-30 with all of
# them, machine otherwise quiet, two guests booting at once on one host,
# benchmarks/bench_lab_stability.py --concurrent 2): 2 triple faults in 6
# boots, each after the guest reached its shell.  Xen's dumps of those
# guests (tests/data/recorded/xl_dmesg_triple_fault_x2apic_eoi_* and
# *_host_state_in_vmcb_*) show the cause is below the guest: one faulted right
# after a wrmsr to the x2APIC EOI register (an intercepted instruction, like
# the earlier `in`/`out` sites), and in the other the guest's VMCB held the
# host's own state at VMRUN (Xen's CS, RIP, stack, and the VMCB address in
# RAX), so the guest resumed at a Xen address and faulted three times.  That
# points at QEMU 7.2's TCG emulation of VMRUN/#VMEXIT (nested SVM), not at
# anything Xen or the guest is told.  Pinning both guests to one physical
# CPU (`cpus="1-1"`) gave no crash in 4 boots but halved their speed and
# left 2 of them without their network (ready marker) after 13 minutes:
# no remedy.
