"""The typed HVM guest and its xl config text: quoting, rendering, reading
back, validation and host quirks."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenhil.harness.errors import ConfigError
from xenhil.harness.xen.splits import parse_split
from xenhil.harness.xen.xlconfig import (Disk, DirectKernelBoot, DiskBoot, HvmGuest, Vif, XlConfigError,
                                         XlSyntaxError, parse_xl_config, xl_list, xl_string, xl_value)
from tests.support.libxlutil import INSTALL_HINT, LIBXLUTIL, XlParseFailed


def lab_guest(**changes) -> HvmGuest:
    """The guest of the docs/xen-ioreq-facts.md section 7: direct kernel boot, pty serial,
    an e1000 vif on a bridge, one IDE disk."""
    guest = HvmGuest(
        name="xenhil-g1", memory=256,
        boot=DirectKernelBoot("/var/lib/xenhil/vmlinuz", "/var/lib/xenhil/initrd.img",
                              "console=ttyS0,115200 xen_emul_unplug=never"),
        vifs=[Vif("nic1", model="e1000", bridge="xenbr0", mac="00:16:3e:00:00:01")],
        disks=[Disk("/var/lib/xenhil/g1.img", vdev="hda")],
        serial="pty",
        device_model_args=["-trace", "enable=handle_ioreq", "-D", "/var/log/xen/qemu-trace.log"],
    )
    return dataclasses.replace(guest, **changes)


# --------------------------------------------------------------------------
# Strings
# --------------------------------------------------------------------------

NASTY = [
    "", "plain", "it's", 'say "hi"', "both ' and \"", "back\\slash", "trailing\\",
    "\\n is not a newline", "new\nline", "tab\there", "cr\rlf\r\n", "bell\a\b\f\v",
    "# not a comment", "a,b;c=d[e]", "ünïcödé ✓ 日本", "\x01\x02\x1b[31m\x7f", "'", '"', "\\'",
    "-trace enable=handle_ioreq*", "  spaces  ",
]


@pytest.mark.parametrize("text", NASTY, ids=range(len(NASTY)))
def test_nasty_strings_round_trip(text):
    for prefer in ('"', "'"):
        literal = xl_string(text, prefer)
        assert "\n" not in literal and "\r" not in literal  # one line, as xl's lexer needs
        assert parse_xl_config(f"k = {literal}\n") == {"k": text}


def test_quote_choice_avoids_escapes():
    assert xl_string('say "hi"') == "'say \"hi\"'"
    assert xl_string("it's") == '"it\'s"'
    assert xl_string("both ' and \"") == '"both \' and \\""'


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",))))
def test_any_string_without_nul_round_trips(text):
    assert parse_xl_config(f"key = {xl_string(text)}\n")["key"] == text


def test_nul_cannot_be_expressed():
    with pytest.raises(ConfigError, match="NUL character"):
        xl_string("a\0b")


def test_lone_surrogate_cannot_be_expressed():
    with pytest.raises(ConfigError, match="not valid Unicode"):
        xl_string("a\ud800")


def test_negative_numbers_have_no_xl_syntax():
    with pytest.raises(ConfigError, match="non-negative"):
        xl_value(-1)


def test_lists_and_nesting():
    assert xl_list([]) == "[ ]"
    text = "v = " + xl_value(["a", 1, ["b", 2]]) + "\n"
    assert parse_xl_config(text) == {"v": ["a", 1, ["b", 2]]}


# --------------------------------------------------------------------------
# Reading xl syntax (the subset we write, plus xl's other forms)
# --------------------------------------------------------------------------

def test_parse_xl_forms():
    text = (
        "# comment line\n"
        "name = 'g'; memory = 0x100\n"
        "vcpus = 010   # octal, as strtol reads it\n"
        "vif = [ 'a',\n"
        "        'b', ]\n"
        "\n"
        "extra = \"x\"\n"
        "extra += \"y\"\n"
        "args = [ \"1\" ]\n"
        "args += [ \"2\" ]\n"
        "name = \"later wins\"\n"
    )
    assert parse_xl_config(text) == {
        "name": "later wins", "memory": 256, "vcpus": 8, "vif": ["a", "b"],
        "extra": "xy", "args": ["1", "2"]}


@pytest.mark.parametrize("text,fragment", [
    ("Name = 'x'\n", "lexical error"),                     # keys are lower case
    ("k = 'x'\r\n", "carriage return"),                    # CRLF is a lexical error in xl
    ("k = 'a\\qb'\n", "invalid escape"),
    ("k = 'a\\x41'\n", "numeric escape"),                  # xl drops numeric escapes
    ("k = 'a\\101'\n", "numeric escape"),
    ("k = 'open\n", "lexical error"),
    ("k = -1\n", "lexical error"),
    ("k = [ 'a' 'b' ]\n", "expected ',' or ']'"),
    ("k 'a'\n", "expected = or OP_ADD"),
    ("k = 1\nk += 'x'\n", r"cannot \+= a str to int"),
    ("k = 12z\n", "found 'z'"),                            # NUMBER 12, then IDENT z
], ids=range(11))
def test_parse_rejects_what_xl_rejects(text, fragment):
    with pytest.raises(XlSyntaxError, match=fragment):
        parse_xl_config(text)


# --------------------------------------------------------------------------
# Rendering a guest
# --------------------------------------------------------------------------

def test_render_of_the_lab_guest_is_exact():
    assert lab_guest().render() == (
        '# xl config rendered by xenhil: guest xenhil-g1, split single\n'
        'name = "xenhil-g1"\n'
        'type = "hvm"\n'
        'memory = 256\n'
        'vcpus = 1\n'
        'kernel = "/var/lib/xenhil/vmlinuz"\n'
        'ramdisk = "/var/lib/xenhil/initrd.img"\n'
        'cmdline = "console=ttyS0,115200 xen_emul_unplug=never"\n'
        'vif = [ "type=ioemu,model=e1000,bridge=xenbr0,mac=00:16:3e:00:00:01" ]\n'
        'disk = [ "format=raw, vdev=hda, access=rw, target=/var/lib/xenhil/g1.img" ]\n'
        'serial = "pty"\n'
        'device_model_version = "qemu-xen"\n'
        'device_model_args = [ "-trace", "enable=handle_ioreq", "-D", "/var/log/xen/qemu-trace.log" ]\n'
    )


def test_single_split_writes_no_device_models_and_no_vif_id():
    text = lab_guest().render()
    assert "device_models" not in text
    assert "id=" not in text  # xl 4.17 rejects unknown vif keys


def test_split_writes_device_models_and_vif_ids():
    guest = lab_guest(split=parse_split(["name=qnet,vifs=nic1", "name=qall,ui,ide,serial"]))
    settings = parse_xl_config(guest.render())
    assert settings["device_models"] == ["name=qnet,vifs=nic1", "name=qall,ui,ide,serial"]
    assert settings["vif"] == ["type=ioemu,model=e1000,bridge=xenbr0,mac=00:16:3e:00:00:01,id=nic1"]
    assert "device_models = [ 'name=qnet,vifs=nic1', 'name=qall,ui,ide,serial' ]\n" in guest.render()
    assert guest.owner_table() == {"ui": "qall", "ide": "qall", "serial": "qall", "nic:nic1": "qnet"}


def full_guest() -> HvmGuest:
    return lab_guest(
        name="g.2-x", memory=512, maxmem=1024, vcpus=2,
        vifs=[Vif("nic1", mac="00:16:3e:00:00:01"), Vif("nic2", model="rtl8139", bridge="br-test")],
        disks=[Disk("/srv/it's \"a\" disk, with comma.qcow2", vdev="hda", format="qcow2"),
               Disk("/srv/cd.iso", vdev="hdc", access="ro", cdrom=True)],
        serial=["pty", "file:/tmp/serial log"],
        vga="stdvga", usb=True, soundhw="hda",
        device_model_override="/opt/qemu/bin/qemu-system-i386",
        device_model_args_hvm=["-trace", "enable=xen_ioreq_server*"],
        tsc_mode="native", xen_platform_pci=False,
        on_poweroff="destroy", on_reboot="restart", on_crash="preserve",
        extra={"viridian": 0, "cpuid": ["host,tm=0"], "description": "quote ' \" and \\ in it\n2nd line"},
        split=parse_split(["name=qnet,vifs=nic1;nic2", "name=qall,ui,audio,ide,serial"]),
    )


def test_render_round_trips_through_the_parser():
    guest = full_guest()
    assert parse_xl_config(guest.render()) == guest.xl_settings()
    assert parse_split(parse_xl_config(guest.render())["device_models"]) == guest.split


def test_disk_target_is_written_last():
    spec = full_guest().xl_settings()["disk"][0]
    assert spec.endswith("target=/srv/it's \"a\" disk, with comma.qcow2")
    assert full_guest().xl_settings()["disk"][1] == \
        "format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/srv/cd.iso"


def test_disk_boot():
    guest = lab_guest(boot=DiskBoot("dc"))
    settings = guest.xl_settings()
    assert settings["boot"] == "dc" and "kernel" not in settings


# --------------------------------------------------------------------------
# Validation: every problem, with its field
# --------------------------------------------------------------------------

INVALID = [
    ("bad name", {"name": "my guest"}, "name: 'my guest' is not a usable domain name"),
    ("numeric name", {"name": "42"}, "xl would read it as a domain id"),
    ("dom0 name", {"name": "Domain-0"}, "dom0's name"),
    ("memory low", {"memory": 8}, "memory: 8 MiB is outside"),
    ("memory type", {"memory": "256"}, "memory: '256' MiB is outside"),
    ("maxmem below", {"maxmem": 128}, "maxmem 128 is below memory 256"),
    ("vcpus zero", {"vcpus": 0}, "vcpus: 0 is outside 1..128"),
    ("relative kernel", {"boot": DirectKernelBoot("vmlinuz")}, "boot.kernel: 'vmlinuz' is not an absolute path"),
    ("disk boot without disk", {"boot": DiskBoot("c"), "disks": []}, "disk boot but the guest has no disk"),
    ("bad boot order", {"boot": DiskBoot("x")}, "is not a boot order"),
    ("duplicate vif id", {"vifs": [Vif("nic1"), Vif("nic1")]}, "vif id 'nic1' is used twice"),
    ("bad vif id", {"vifs": [Vif("nic 1")]}, "'nic 1' is not a valid vif id"),
    ("bad mac", {"vifs": [Vif("nic1", mac="00:16:3e:00:01")]}, "is not a MAC address"),
    ("mac letters", {"vifs": [Vif("nic1", mac="00:16:3e:00:00:0g")]}, "is not a MAC address"),
    ("multicast mac", {"vifs": [Vif("nic1", mac="01:16:3e:00:00:01")]}, "is a multicast address"),
    ("duplicate mac", {"vifs": [Vif("a", mac="00:16:3e:00:00:01"), Vif("b", mac="00:16:3E:00:00:01")]},
     "is used twice"),
    ("nic model", {"vifs": [Vif("nic1", model="virtio")]}, "'virtio' is not one of e1000, rtl8139"),
    ("bridge", {"vifs": [Vif("nic1", bridge="br,0")]}, "is not a bridge name"),
    ("scsi disk", {"disks": [Disk("/x.img", vdev="sda")]}, "'sda' is not an IDE disk name"),
    ("duplicate vdev", {"disks": [Disk("/a"), Disk("/b")]}, "vdev hda is used twice"),
    ("disk format", {"disks": [Disk("/a", format="vmdk")]}, "'vmdk' is not one of"),
    ("disk backslash", {"disks": [Disk("/a\\b")]}, "is not a usable disk target"),
    ("serial empty list", {"serial": []}, "is not a serial setting"),
    ("vga", {"vga": "qxl2"}, "vga: 'qxl2' is not one of"),
    ("tsc", {"tsc_mode": "emulate"}, "tsc_mode: 'emulate' is not one of"),
    ("on_crash", {"on_crash": "reboot"}, "on_crash: 'reboot' is not one of"),
    ("override relative", {"device_model_override": "qemu"}, "is not an absolute path"),
    ("dm args type", {"device_model_args": "-trace x"}, "is not a list of strings"),
    ("extra bad key", {"extra": {"Bad-Key": 1}}, "extra['Bad-Key']: not a valid xl key"),
    ("extra typed key", {"extra": {"memory": 1}}, "memory is written from a typed field"),
    ("extra negative", {"extra": {"shadow_memory": -1}}, "non-negative"),
    ("split misses serial", {"split": parse_split(["name=qnet,vifs=nic1", "name=qall,ui,ide"])},
     "split: the guest has serial port but no model owns serial"),
    ("split misses vif", {"split": parse_split(["name=qall,ui,ide,serial"])},
     "split: the guest's vif 'nic1' is in no model's vifs="),
    ("split unknown vif", {"split": parse_split(["name=qall,ui,ide,serial,vifs=nic1;nic9"])},
     "vif id 'nic9' is not a vif of the guest"),
    ("split traditional", {"device_model_version": "qemu-xen-traditional",
                           "split": parse_split(["name=qnet,vifs=nic1", "name=qall,ui,ide,serial"])},
     "needs device_model_version qemu-xen"),
]


@pytest.mark.parametrize("changes,fragment", [i[1:] for i in INVALID], ids=[i[0] for i in INVALID])
def test_invalid_guest_is_rejected_naming_the_field(changes, fragment):
    guest = lab_guest(**changes)
    with pytest.raises(XlConfigError) as info:
        guest.render()
    assert isinstance(info.value, ConfigError)
    assert any(fragment in m for m in info.value.messages()), info.value.messages()


def test_all_guest_problems_are_reported_at_once():
    guest = lab_guest(name="4", memory=1, vcpus=0, vifs=[Vif("a", mac="zz"), Vif("a")])
    with pytest.raises(XlConfigError) as info:
        guest.check()
    assert len(info.value.problems) >= 5
    assert "fix:" in str(info.value)


# --------------------------------------------------------------------------
# Host quirks
# --------------------------------------------------------------------------

def test_apply_quirks_for_an_emulated_host():
    guest = lab_guest()
    quirked = guest.apply_quirks({"tsc_mode": "native",
                                  "device_model_args": ["-accel", "tcg"],
                                  "hap": 1})
    assert guest.tsc_mode is None and guest.extra == {}          # the original is untouched
    settings = parse_xl_config(quirked.render())
    assert settings["tsc_mode"] == "native"
    assert settings["device_model_args"][-2:] == ["-accel", "tcg"]
    assert settings["device_model_args"][:2] == ["-trace", "enable=handle_ioreq"]
    assert settings["hap"] == 1
    assert "# host quirk: tsc_mode = 'native'" in quirked.render()


def test_quirk_replaces_an_explicit_scalar():
    assert lab_guest(tsc_mode="default").apply_quirks({"tsc_mode": "native"}).tsc_mode == "native"


@pytest.mark.parametrize("quirks,fragment", [
    ({"Bad Key": 1}, "not a valid xl config key"),
    ({"vif": []}, "typed field that quirks may not set"),
    ({"device_model_args": "-accel tcg"}, "must be a list"),
], ids=["bad key", "typed key", "list field"])
def test_bad_quirks_are_config_errors(quirks, fragment):
    with pytest.raises(ConfigError, match=fragment):
        lab_guest().apply_quirks(quirks)


# --------------------------------------------------------------------------
# Against xl's own parser (libxlutil 4.17): what xl create would read
# --------------------------------------------------------------------------

needs_libxlutil = pytest.mark.skipif(LIBXLUTIL is None, reason=f"xl's parser library is missing: {INSTALL_HINT}")


def _as_xl_reads(value):
    """What libxlutil hands back for a value we wrote: numbers as their text."""
    if isinstance(value, list):
        return [_as_xl_reads(v) for v in value]
    return str(value) if isinstance(value, int) else value


@needs_libxlutil
@pytest.mark.parametrize("text", NASTY, ids=range(len(NASTY)))
def test_real_xl_reads_nasty_strings_back(text):
    for prefer in ('"', "'"):
        assert LIBXLUTIL.read(f"k = {xl_string(text, prefer)}\n", ["k"]) == {"k": text}


@needs_libxlutil
@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",))))
def test_real_xl_reads_any_string_back(text):
    assert LIBXLUTIL.read(f"k = {xl_string(text)}\n", ["k"])["k"] == text


@needs_libxlutil
@pytest.mark.parametrize("guest", [lab_guest(), full_guest(),
                                   lab_guest(split=parse_split(["name=qnet,vifs=nic1", "name=qall,ui,ide,serial"])),
                                   lab_guest().apply_quirks({"tsc_mode": "native"})],
                         ids=["lab", "full", "split", "quirked"])
def test_real_xl_reads_the_rendered_guest(guest):
    settings = guest.xl_settings()
    flat = {k: v for k, v in settings.items()
            if not (isinstance(v, list) and any(isinstance(i, list) for i in v))}
    assert LIBXLUTIL.read(guest.render(), list(flat)) == {k: _as_xl_reads(v) for k, v in flat.items()}


@needs_libxlutil
def test_real_xl_reads_our_parser_forms_the_same_way():
    text = "a = 'x'; b = 0x10\nc = [ 'p',\n  'q', ]\nc += [ 'r' ]\nd = 'e'\nd += 'f'\n# end"
    ours = parse_xl_config(text + "\n")
    assert LIBXLUTIL.read(text + "\n", list(ours)) == {"a": "x", "b": "0x10", "c": ["p", "q", "r"], "d": "ef"}
    assert ours == {"a": "x", "b": 16, "c": ["p", "q", "r"], "d": "ef"}


@needs_libxlutil
@pytest.mark.parametrize("text", ["Name = 'x'\n", "k = 'x'\r\n", "k = 'a\\qb'\n", "k = 'a\\x41'\n",
                                  "k = 'open\n", "k = -1\n", "k = [ 'a' 'b' ]\n"], ids=range(7))
def test_real_xl_rejects_what_our_parser_rejects(text):
    with pytest.raises(XlSyntaxError):
        parse_xl_config(text)
    with pytest.raises(XlParseFailed):
        LIBXLUTIL.read(text, ["k"])


@needs_libxlutil
def test_real_xl_disk_parser_reads_our_disk_specs():
    guest = full_guest()
    for disk, spec in zip(guest.disks, guest.xl_settings()["disk"]):
        parsed = LIBXLUTIL.parse_disk(spec)
        assert parsed.target == disk.target
        assert parsed.vdev == disk.vdev
        assert parsed.format == disk.format
        assert parsed.readwrite == (disk.access in ("rw", "w"))
        assert parsed.is_cdrom == disk.cdrom
