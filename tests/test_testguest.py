"""The test guest (harness.xen.testguest.guest_model): the one description
the suites, the real-Xen smoke and the benchmarks boot, rendered by
HvmGuest's one xl writer and read back by our parser and by xl's own
(libxlutil 4.17)."""
from __future__ import annotations

import subprocess

import pytest

from xenhil.harness.errors import ConfigError
from xenhil.harness.lab.virtual import guestkit
from xenhil.harness.lab.virtual.builder import recipe_dir
from xenhil.harness.xen.catalog import load_catalog
from xenhil.harness.xen.testguest import GUEST_CMDLINE, TRACE_EVENTS, guest_model
from xenhil.harness.xen.xlconfig import HvmGuest, XlConfigError, parse_xl_config
from xenhil.harness.lab.profile import HostProfile
from tests.support.libxlutil import INSTALL_HINT, LIBXLUTIL

needs_libxlutil = pytest.mark.skipif(LIBXLUTIL is None, reason=f"xl's parser library is missing: {INSTALL_HINT}")

PROFILES = {name: HostProfile.of(capabilities) for name, capabilities in
            {"emulated": {"emulated": True}, "real": {"emulated": False}, "none": {}}.items()}
# Values a caller may hand the description: quotes of both kinds, a
# backslash, '$', '#', ',', '=', ';', brackets, non-ASCII, spaces.
AWKWARD = ['say "hi"', "it's", "both ' and \"", r"back\slash", "trailing\\", "$HOME", "#not-a-comment",
           "a,b=c", "x;y", "[z]", "größe ✓ 日本", "  spaces  "]
# Disk targets: xl's disk parser takes everything after target=, commas too;
# HvmGuest refuses a backslash or newline in a target.
AWKWARD_TARGETS = ["/var/lib/xenhil/guests/a b.img", "/tmp/it's.img", '/tmp/say "hi".img',
                   "/tmp/$HOME#1.img", "/tmp/a,b=c.img", "/tmp/größe ✓.img"]


def _entries():
    return list(load_catalog())


def _as_xl_reads(value):
    """What libxlutil hands back for a value we wrote: numbers as their text."""
    if isinstance(value, list):
        return [_as_xl_reads(v) for v in value]
    return str(value) if isinstance(value, int) else value


def test_the_description_is_shared_with_the_fixtures():
    from xenhil.fixtures.guest import guest_model as fixtures_guest_model
    assert fixtures_guest_model is guest_model


def test_the_guest_kit_has_no_second_config_writer():
    assert not hasattr(guestkit, "guest_config")
    from xenhil.harness.lab.virtual.builder import recipe_dir
    assert not (recipe_dir() / "guest" / "guest.cfg.in").exists()


@pytest.mark.parametrize("host", list(PROFILES))
@pytest.mark.parametrize("entry", _entries(), ids=lambda e: e.id)
def test_every_test_guest_renders_and_reads_back(entry, host):
    caps = PROFILES[host]
    for disk in (f"/var/lib/xenhil/guests/g-{host}.img", None):
        model = guest_model("xh-g1", entry, caps, disk)
        assert isinstance(model, HvmGuest)
        text = model.render()
        assert text.endswith("\n") and "\r" not in text
        settings = parse_xl_config(text)
        assert settings == model.xl_settings()
        assert settings["kernel"] == f"{guestkit.GUEST_KIT_DIR}/vmlinuz"
        assert settings["ramdisk"] == f"{guestkit.GUEST_KIT_DIR}/initrd.img"
        assert len(settings["vif"]) == len(entry.guest_vifs)
        assert ("disk" in settings) is (disk is not None)
        assert settings["on_crash"] == settings["on_reboot"] == "preserve"
        trace = [a for a in settings["device_model_args"] if a != "-trace"]
        assert trace == [f"enable={e}" for e in TRACE_EVENTS]
        assert ("device_models" in settings) is (not entry.split.is_single)


def test_the_kernel_command_line_is_exact_on_both_kinds_of_host():
    single = load_catalog().get("single")
    emulated = guest_model("g1", single, PROFILES["emulated"])
    assert emulated.boot.cmdline == f"{GUEST_CMDLINE} pci=noearly loglevel=4"
    assert parse_xl_config(emulated.render())["tsc_mode"] == "native"
    for host in ("real", "none"):
        model = guest_model("g1", single, PROFILES[host])
        assert model.boot.cmdline == GUEST_CMDLINE == "console=ttyS0,115200 xen_emul_unplug=never"
        assert model.tsc_mode is None and "tsc_mode" not in parse_xl_config(model.render())


def test_the_guest_takes_its_address_from_the_command_line_the_model_renders(tmp_path):
    """The pool gives each guest of a host its own address (two guests run
    at once): the kernel command line of the model carries it, and the kit's
    init takes its static address from there (that part of the init, run by
    a shell on the rendered command line); without one, the kit's default."""
    single = load_catalog().get("single")
    model = guest_model("g1", single, PROFILES["emulated"], address="192.168.100.11")
    cmdline = parse_xl_config(model.render())["cmdline"]
    assert cmdline.endswith(" xenhil.addr=192.168.100.11 xenhil.name=g1"), cmdline
    init = (recipe_dir() / "guest" / "init").read_text()
    start = init.index("    static=")
    part = init[start:init.index("    done\n", start) + len("    done\n")]
    for given, expected in ((cmdline, "192.168.100.11"),
                            (guest_model("g1", single, PROFILES["emulated"]).boot.cmdline,
                             guestkit.GUEST_ADDRESS)):
        (tmp_path / "cmdline").write_text(given + "\n")
        script = part.replace("/proc/cmdline", str(tmp_path / "cmdline")) + 'echo "$static"\n'
        out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
        assert out.stdout == expected + "\n"


def test_awkward_values_reach_the_config_unchanged():
    single = load_catalog().get("single")
    model = guest_model("g1", single, PROFILES["emulated"], trace_events=AWKWARD[:2],
                        device_model_args=AWKWARD)
    settings = parse_xl_config(model.render())
    assert settings["device_model_args"] == [x for e in AWKWARD[:2] for x in ("-trace", f"enable={e}")] + AWKWARD
    for target in AWKWARD_TARGETS:
        rendered = parse_xl_config(guest_model("g1", single, PROFILES["none"], target).render())
        assert rendered["disk"] == [f"format=raw, vdev=hda, access=rw, target={target}"]


@pytest.mark.parametrize("name", ["g 1; rm", 'g"1', "g'1", "", "123", "Domain-0", "größe",
                                  "-lead", "g\n1", "x" * 65])
def test_names_xl_would_not_take_are_refused_naming_the_field(name):
    with pytest.raises(XlConfigError) as failure:
        guest_model(name, load_catalog().get("single"), PROFILES["none"])
    assert isinstance(failure.value, ConfigError)
    assert any(m.startswith("name:") for m in failure.value.messages()), failure.value.messages()


@pytest.mark.parametrize("target", ["/tmp/back\\slash.img", "/tmp/new\nline.img", ""])
def test_disk_targets_xl_would_misread_are_refused(target):
    with pytest.raises(XlConfigError, match=r"disks\[0\]\.target"):
        guest_model("g1", load_catalog().get("single"), PROFILES["none"], target)


# --- xl's own parser -----------------------------------------------------------

@needs_libxlutil
@pytest.mark.parametrize("host", list(PROFILES))
@pytest.mark.parametrize("entry", _entries(), ids=lambda e: e.id)
def test_real_xl_reads_every_test_guest(entry, host):
    model = guest_model("xh-g1", entry, PROFILES[host], "/var/lib/xenhil/guests/xh-g1.img")
    settings = model.xl_settings()
    flat = {k: v for k, v in settings.items()
            if not (isinstance(v, list) and any(isinstance(i, list) for i in v))}
    assert LIBXLUTIL.read(model.render(), list(flat)) == {k: _as_xl_reads(v) for k, v in flat.items()}


@needs_libxlutil
def test_real_xl_reads_awkward_values_back():
    single = load_catalog().get("single")
    model = guest_model("g1", single, PROFILES["emulated"], trace_events=(),
                        device_model_args=AWKWARD)
    assert LIBXLUTIL.read(model.render(), ["device_model_args", "cmdline"]) == {
        "device_model_args": AWKWARD, "cmdline": f"{GUEST_CMDLINE} pci=noearly loglevel=4"}
    for target in AWKWARD_TARGETS:
        text = guest_model("g1", single, PROFILES["none"], target).render()
        (spec,) = LIBXLUTIL.read(text, ["disk"])["disk"]
        parsed = LIBXLUTIL.parse_disk(spec)
        assert (parsed.target, parsed.vdev, parsed.format, parsed.readwrite) == (target, "hda", "raw", True)
