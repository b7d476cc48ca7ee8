"""The virtual lab: recipe pieces (fast) and one real end-to-end boot (real_xen).

The real test uses one emulated host (QEMU TCG, real Xen 4.17, Debian dom0):
the running virtual lab's given with --lab (scripts/test-framework's), or one
it starts itself.  It goes through the same paths a real lab uses: serial transcript, IPMI power through
the virtual BMC, SSH with a pinned host key, ``xl create`` of an HVM guest
and its console.  Minutes per boot: select with ``-m real_xen``.

With ``XENHIL_RECORD=1`` it also refreshes the real outputs under
``tests/data/recorded/`` that the parser tests use.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from xenhil.harness.errors import ConfigError
from xenhil.harness.lab.virtual import builder, guestkit, launcher, quirks
from xenhil.harness.xen.catalog import load_catalog
from xenhil.harness.xen.testguest import guest_model
from xenhil.harness.xen.xlconfig import parse_xl_config
from xenhil.harness.lab.profile import HostProfile

RECORDED = Path(__file__).parent / "data" / "recorded"


# --- fast tests of the pieces ------------------------------------------------

def test_guest_quirks_apply_only_to_emulated_hosts():
    assert HostProfile.of({"emulated": True}).guest_xl_settings == {"tsc_mode": "native", "hap": 0}
    assert HostProfile.of({"emulated": False}).guest_xl_settings == {}
    assert HostProfile.of({}).guest_xl_settings == {}


def _fake_qemu(tmp_path: Path, banner: str) -> str:
    """FAKE qemu-system-x86_64 that only prints a version banner: the lab's
    version check must refuse a QEMU this machine does not have installed."""
    binary = tmp_path / "fake-qemu-system-x86_64"
    binary.write_text(f"#!/bin/sh\nprintf '%s\\n' '{banner}'\n")
    binary.chmod(0o755)
    return str(binary)


@pytest.mark.parametrize("banner, refused", [
    ("QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)", "is QEMU 7.2; the virtual lab needs 10.0"),
    ("QEMU emulator version 9.2.0", "is QEMU 9.2; the virtual lab needs 10.0"),
    ("not a qemu at all", "did not print a QEMU version"),
    ("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)", None),
    ("QEMU emulator version 11.1.0", None),
])
def test_the_lab_refuses_a_qemu_older_than_the_one_that_holds_still(tmp_path, banner, refused):
    from xenhil.harness.errors import ConfigError
    from xenhil.harness.lab.virtual.launcher import check_qemu_version
    binary = _fake_qemu(tmp_path, banner)
    if refused is None:
        assert check_qemu_version(binary) >= quirks.QEMU_MIN_VERSION
        return
    with pytest.raises(ConfigError) as info:
        check_qemu_version(binary)
    assert refused in str(info.value) and "bookworm-backports" in info.value.help


def test_the_installed_lab_qemu_is_new_enough():
    """scripts/setup installs the lab's QEMU from bookworm-backports: a
    machine set up by it passes the check (CI's does)."""
    from xenhil.harness.lab.virtual.launcher import check_qemu_version
    if shutil.which(quirks.QEMU_BINARY) is None:
        pytest.fail(f"{quirks.QEMU_BINARY} missing: scripts/setup installs it")
    assert check_qemu_version() >= quirks.QEMU_MIN_VERSION


def test_the_guest_kernel_gets_the_emulated_hosts_options():
    """pci=noearly and loglevel=4 (fewer ioreq round trips per boot) reach the
    test guest (the suites', the smoke's, the benchmarks': one description)
    on an emulated host, in its model and in its rendered xl config, and
    neither on real hardware."""
    single = load_catalog().get("single")
    for caps, wanted in ((HostProfile(emulated=True), True), (HostProfile(emulated=False), False)):
        for model in (guest_model("g1", single, caps, "/tmp/g1.img"),          # the suites'
                      guest_model("smoke", single, caps, trace_events=())):    # no disk, no trace
            rendered = parse_xl_config(model.render())["cmdline"]
            for line in (model.boot.cmdline, rendered):
                assert line.startswith("console=ttyS0,115200 xen_emul_unplug=never"), line
                words = line.split()
                assert ("pci=noearly" in words and "loglevel=4" in words) is wanted, line
            assert rendered == model.boot.cmdline


def test_the_test_guest_carries_the_host_quirks_and_the_callers_qemu_arguments():
    single = load_catalog().get("single")
    model = guest_model("g1", single, HostProfile(emulated=True), trace_events=["handle_ioreq"],
                        device_model_args=["-D", "/var/log/xen/g1.trace"])
    settings = parse_xl_config(model.render())
    assert settings["name"] == "g1" and settings["type"] == "hvm"
    assert settings["tsc_mode"] == "native" and settings["hap"] == 0
    assert "# host quirk: tsc_mode = 'native'" in model.render()
    assert "# host quirk: hap = 0" in model.render()
    assert settings["device_model_args"] == ["-trace", "enable=handle_ioreq",
                                             "-D", "/var/log/xen/g1.trace"]
    assert "disk" not in settings                     # no disk unless one is given
    assert settings["vif"] == ["type=ioemu,model=e1000,bridge=xenbr0"]
    real = guest_model("g1", single, HostProfile(emulated=False), "/tmp/g1.img").render()
    assert "tsc_mode" not in parse_xl_config(real) and "hap" not in parse_xl_config(real)
    assert parse_xl_config(real)["disk"] == ["format=raw, vdev=hda, access=rw, target=/tmp/g1.img"]


def test_the_test_guest_refuses_unusable_names_and_carries_awkward_values():
    single = load_catalog().get("single")
    with pytest.raises(ConfigError, match="name"):
        guest_model("g 1; rm", single, HostProfile())
    awkward = ['a" b', "it's", r"back\slash", "$HOME #x", "a,b=c", "größe ✓"]
    model = guest_model("g1", single, HostProfile(), trace_events=(), device_model_args=awkward)
    assert parse_xl_config(model.render())["device_model_args"] == awkward


def test_newc_archive_is_readable_by_cpio(tmp_path):
    if shutil.which("cpio") is None:
        pytest.skip("cpio not installed (apt-get install cpio)")
    archive = guestkit.NewcArchive()
    archive.file("etc/hello", b"hi\n", 0o600)
    archive.symlink("bin/sh", "busybox")
    archive.char_device("dev/console", 5, 1)
    (tmp_path / "a.cpio").write_bytes(archive.getvalue())
    import subprocess
    listing = subprocess.run(["cpio", "-itv"], input=(tmp_path / "a.cpio").read_bytes(),
                             capture_output=True, check=True).stdout.decode()
    assert re.search(r"^-rw------- .* etc/hello$", listing, re.M)
    assert re.search(r"^lrwxrwxrwx .* bin/sh -> busybox$", listing, re.M)
    assert re.search(r"^crw------- .* 5,\s+1 .* dev/console$", listing, re.M)
    assert re.search(r"^drwxr-xr-x .* etc$", listing, re.M)


def test_elf_needed_reads_this_python():
    import sys
    needed, interp = guestkit.elf_needed(Path(os.path.realpath(sys.executable)).read_bytes())
    assert interp and interp.startswith("/lib")
    assert any(n.startswith("libc.so") for n in needed) or "libpython" in " ".join(needed)


def test_write_mbr_layout(tmp_path):
    disk = tmp_path / "d.raw"
    disk.write_bytes(b"\0" * (4 * 1024 * 1024))
    boot = bytes(range(256)) * 2
    builder.write_mbr(disk, boot, b"CORE" * 300, 8192)
    data = disk.read_bytes()
    assert data[:440] == boot[:440]
    assert data[510:512] == b"\x55\xaa"
    status, ptype = data[446], data[446 + 4]
    start, count = struct.unpack_from("<II", data, 446 + 8)
    assert (status, ptype, start, count) == (0x80, 0x83, 2048, 8192 - 2048)
    assert data[512:516] == b"CORE"  # core.img at sector 1, where boot.img looks


def test_write_mbr_refuses_core_img_that_overlaps_the_partition(tmp_path):
    disk = tmp_path / "d.raw"
    disk.write_bytes(b"\0" * 2048)
    with pytest.raises(builder.BuildError):
        builder.write_mbr(disk, b"\0" * 512, b"x" * (2048 * 512), 8192)


def test_apt_mirror_reads_deb822_and_one_line_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("XENHIL_DEBIAN_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n")
    assert builder.apt_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text("deb [arch=amd64] http://other.example/debian bookworm main\n")
    assert builder.apt_mirror(tmp_path) == "http://other.example/debian"


def test_read_packages_names_the_bad_line(tmp_path):
    path = tmp_path / "packages.txt"
    path.write_text("# c\nxen-utils-4.17\nBad Name\n")
    with pytest.raises(ConfigError, match=r"packages.txt:3"):
        builder.read_packages(path)


def test_recipe_hash_changes_with_a_config_file(tmp_path, monkeypatch):
    recipe = tmp_path / "virtual"
    # Only the recipe's dom0 part (what image_hash reads): the folder also
    # holds running labs' state (sockets, disks) that must not be copied.
    shutil.copytree(builder.recipe_dir() / "dom0", recipe / "dom0")
    keys = builder.ensure_keys(tmp_path / "keys")
    first = builder.image_hash("R", recipe, keys, "K")
    assert builder.image_hash("R", recipe, keys, "K") == first
    (recipe / "dom0/overlay/etc/hostname").write_text("other\n")
    assert builder.image_hash("R", recipe, keys, "K") != first


def test_plan_hosts_gives_each_host_its_own_address(tmp_path):
    hosts = launcher.plan_hosts(3, tmp_path, address_base=40)
    assert [h.address for h in hosts] == ["127.0.0.41", "127.0.0.42", "127.0.0.43"]
    argv = launcher.qemu_argv(hosts[0])
    joined = " ".join(argv)
    assert "hostfwd=tcp:127.0.0.41:" in joined and "-10.0.2.15:22" in joined
    assert f"dhcpstart={launcher.GUEST_DHCP_START}" in joined  # guests never get dom0's address
    assert "wait=off" in joined and "logfile=" in joined
    with pytest.raises(ConfigError):
        launcher.plan_hosts(0, tmp_path)


def test_inventory_of_the_virtual_lab_validates(tmp_path):
    from xenhil.harness.lab.inventory import load_inventory
    keys = builder.ensure_keys(tmp_path / "keys")
    image = builder.BuiltImage(tmp_path, "h", keys, "6.1", "xen.gz")
    hosts = launcher.plan_hosts(2, tmp_path / "state", address_base=40)
    path = tmp_path / "virtual.yaml"
    path.write_text(launcher.inventory_text(hosts, image, tmp_path / "state"))
    inventory = load_inventory(path)
    spec = inventory.host("vhost2")
    assert spec.capabilities == {"cpu_vendor": "amd", "virt": "svm", "emulated": True,
                                 "ram_mb": quirks.MEMORY_MB, "cpus": quirks.SMP}
    assert spec.ssh.host_key == keys.host_key_pin()
    assert spec.power.kind == "ipmi" and spec.power.password.env == launcher.PASSWORD_ENV
    assert (spec.serial.kind, spec.serial.host) == ("tcp", "127.0.0.42")


def test_down_without_a_lab_does_nothing(tmp_path):
    assert launcher.down(tmp_path / "nothing", progress=lambda m: None) == 0


# --- the real thing ------------------------------------------------------------

def _missing_real_prerequisites() -> str | None:
    if os.geteuid() != 0:
        return "building the dom0 image needs root (debootstrap, chroot)"
    for tool in ("qemu-system-x86_64", "qemu-img", "ipmitool", "debootstrap", "mke2fs"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (see lab/virtual/README.md for the apt packages)"
    return None


def _serial_text(host: launcher.VirtualHost) -> str:
    return host.serial_log.read_bytes().decode(errors="replace")


def _wait_serial(host: launcher.VirtualHost, pattern: str, timeout: float, start: int = 0) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, _serial_text(host)[start:]):
        if time.monotonic() > deadline:
            pytest.fail(f"{pattern!r} not on {host.name}'s serial in {timeout}s:\n"
                        + launcher.serial_tail(host))
        time.sleep(2)


def _record(name: str, data: bytes | str) -> None:
    if os.environ.get("XENHIL_RECORD") != "1":
        return
    RECORDED.mkdir(parents=True, exist_ok=True)
    path = RECORDED / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(data if isinstance(data, bytes) else data.encode(), 9))
    elif isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)


def _virtual_lab_behind(inventory: str | None) -> tuple[Path, launcher.VirtualHost] | None:
    """The running virtual lab that wrote ``inventory`` (`xenhil lab up`): its
    state dir and first host, or None for another kind of inventory.  Its
    lease store lies in its state dir, whose state names the inventory."""
    if not inventory:
        return None
    import yaml
    from xenhil.harness.dburl import sqlite_path
    try:
        url = (yaml.safe_load(Path(inventory).read_text()) or {}).get("lease_db", "")
        state_dir = sqlite_path(url, "lease store").parent if url.startswith("sqlite:") else None
    except (OSError, yaml.YAMLError, ConfigError):
        return None
    state = launcher.read_state(state_dir) if state_dir else None
    if not state or not state.get("hosts") or not state.get("inventory"):
        return None
    if Path(state["inventory"]).resolve() != Path(inventory).resolve():
        return None
    return state_dir, launcher.VirtualHost.from_json(state["hosts"][0])


@pytest.fixture(scope="module")
def vlab(request):
    """One virtual host: the running lab's given with --lab (scripts/test-framework
    brings one up for all real-Xen tests: a boot of its own costs minutes), held
    through a lease like any test's host; else one started here on address base
    40 and stopped at the end."""
    reason = _missing_real_prerequisites()
    if reason:
        pytest.skip(reason)
    timings: dict[str, float] = {}
    shared = _virtual_lab_behind(request.config.getoption("--lab"))
    if shared is not None:
        state, host = shared
        lab = request.getfixturevalue("lab")
        lease = lab.claim(set(), {}, timeout=1800)
        try:
            assert lease.host == host.name, f"leased {lease.host}, the lab's first host is {host.name}"
            image = builder.build(progress=print)    # the cached image the lab runs: its keys
            yield {"host": host, "spec": lab.inventory.host(host.name), "state": state,
                   "timings": timings, "keys": image.keys, "shared": True}
        finally:
            lab.release(lease)
            print("virtual lab timings:", json.dumps({k: round(v, 1) for k, v in timings.items()}))
        return
    # Not under pytest's basetemp: concurrent pytest runs prune old basetemps,
    # which would delete a running host's disk.  Logs stay for inspection.
    import tempfile
    state = Path(tempfile.mkdtemp(prefix="xenhil-vlab-test-"))
    inventory = state / "virtual.yaml"
    t0 = time.monotonic()
    image = builder.build(progress=print)
    timings["build_s"] = time.monotonic() - t0
    t0 = time.monotonic()
    try:
        # Address base 40: a developer's own `lab up` (base 10) may be running.
        hosts = launcher.up(1, state, inventory=inventory, image=image, address_base=40,
                            progress=print)
        timings["up_to_dom0_ssh_s"] = time.monotonic() - t0
        from xenhil.harness.lab.inventory import load_inventory
        yield {"host": hosts[0], "spec": load_inventory(inventory).host("vhost1"),
               "state": state, "timings": timings, "keys": image.keys, "shared": False}
    finally:
        launcher.down(state, progress=print)
        print("virtual lab timings:", json.dumps({k: round(v, 1) for k, v in timings.items()}))


def _pids_of(host: launcher.VirtualHost) -> list[int]:
    pids = []
    for f in (host.bmc_pidfile, host.machine_pidfile):
        try:
            pids.append(int(f.read_text()))
        except (OSError, ValueError):
            pass
    return pids


@pytest.mark.real_xen
@pytest.mark.slow
def test_virtual_host_end_to_end(vlab):
    """One host: Xen banner + dom0 getty on serial, IPMI status, SSH `xl info`
    with hvm, an HVM guest answering on its console and listing its PCI
    devices, a power cycle through the BMC back to SSH, and `down` leaving
    no process."""
    from xenhil.harness.access.power import power_for
    from xenhil.harness.access.ssh import SSHConnection

    host, spec, timings = vlab["host"], vlab["spec"], vlab["timings"]

    # Serial: Xen's banner and dom0's login prompt (hvc0 through Xen's console).
    _wait_serial(host, r"\(XEN\) Xen version 4\.17", 10)
    _wait_serial(host, r"xenhil-vhost login:", 120)
    assert "Booting `Xen 4.17" in _serial_text(host)  # GRUB from the disk chose the entry

    # Power through the virtual BMC, as for a real host.
    power = power_for(spec)
    assert power.status() == "on"

    # SSH with the pinned host key: Xen offers HVM (nested SVM under TCG).
    conn = SSHConnection(spec.ssh, name=spec.name, connect_timeout=30)
    try:
        info = conn.run("xl info", check=True, timeout=120).stdout
        assert re.search(r"^virt_caps\s*:.*\bhvm\b", info, re.M), info
        assert re.search(r"^xen_version\s*:\s*4\.17", info, re.M), info
        _record("xl_info_417_emulated.txt", info)

        # An HVM guest from the kit in the image, with the ioreq trace on,
        # through the same Guest class the suites use (it attaches the
        # console again if `xl console` exits while the guest boots).
        from xenhil.harness.guest import Guest
        from xenhil.harness.host import Host
        # The suites' guest (one description), without a disk and with the
        # two trace events the recorded trace below holds.
        model = guest_model("smoke", load_catalog().get("single"), spec.profile,
                            trace_events=("handle_ioreq", "xen_ioreq_server*"))
        assert model.tsc_mode == "native" and 'tsc_mode = "native"' in model.render()
        machine = Host(spec, vlab["state"] / "artifacts")
        guest = Guest(machine, model, vlab["state"] / "artifacts" / "smoke",
                      ready_condition=guestkit.READY_CONDITION, prompt=guestkit.GUEST_PROMPT)
        t0 = time.monotonic()
        guest.create()
        guest.wait_ready()
        timings["guest_create_to_shell_s"] = time.monotonic() - t0
        lspci_n = guest.run("lspci -n", timeout=120)
        bdfs = re.findall(r"^([0-9a-f]{2}:[0-9a-f]{2}\.[0-7]) [0-9a-f]{4}: ([0-9a-f:]{9})",
                          lspci_n, re.M)
        ids = dict(bdfs)
        assert ids.get("00:00.0") == "8086:1237"     # i440FX
        assert "5853:0001" in ids.values()           # Xen platform device
        assert "8086:100e" in ids.values()           # the e1000 (xen_emul_unplug=never)
        _record("guest_lspci_n_417_emulated.txt", lspci_n.strip() + "\n")
        _record("guest_lspci_nn_417_emulated.txt", guest.run("lspci -nn", timeout=120).strip() + "\n")

        # SSH into the guest through dom0 (direct-tcpip inside the host's
        # connection), pinning the host key baked into the guest kit.
        from xenhil.harness.errors import HostKeyMismatch
        from xenhil.harness.lab.model import SSHConfig
        keys = vlab["keys"]
        pin = " ".join(keys.public(keys.guest_host_key).split()[:2])
        guest_ssh = guest.ssh(SSHConfig(address=guestkit.GUEST_ADDRESS, user="root",
                                        key_file=keys.guest_key, host_key=pin))
        try:
            seen = guest_ssh.run("hostname; test -e /run/xenhil-ready && lspci -n | wc -l",
                                 check=True, timeout=120).stdout.split()
            assert seen[0] == "xenhil-guest"
            assert int(seen[1]) == len(bdfs), "SSH and the console see the same guest"
        finally:
            guest_ssh.close()
        impostor = guest.ssh(SSHConfig(address=guestkit.GUEST_ADDRESS, user="root",
                                       key_file=keys.guest_key, host_key=keys.host_key_pin()))
        with pytest.raises(HostKeyMismatch):  # another key pinned: refused, never accepted
            impostor.run("true", timeout=60)
        impostor.close()

        dmesg = guest.xl.rangesets_text()     # xl debug-keys q; xl dmesg
        assert re.search(r"ioreq_server \d+ pci \{", dmesg), dmesg[-2000:]
        _record("xl_dmesg_q_417_emulated.txt", dmesg)
        _record("qemu-dm-smoke_trace_417_emulated.log.gz",
                conn.read_bytes("/var/log/xen/qemu-dm-smoke.log"))
        guest.destroy()
        guest.leak_check()
        machine.close()
    finally:
        conn.close()

    # Power cycle through the BMC: a second Xen banner, SSH back.
    offset = len(host.serial_log.read_bytes())
    t0 = time.monotonic()
    power.cycle()
    launcher.wait_for_ssh(host, quirks.DOM0_BOOT_TIMEOUT_S, serial_offset=offset)
    timings["power_cycle_to_ssh_s"] = time.monotonic() - t0
    after = host.serial_log.read_bytes()[offset:].decode(errors="replace")
    assert re.search(r"\(XEN\) Xen version 4\.17", after)
    conn = SSHConnection(spec.ssh, name=spec.name, connect_timeout=30)
    try:
        assert conn.run("xl list", check=True).stdout.count("\n") == 2  # header + Domain-0
    finally:
        conn.close()

    # Down: nothing of the lab keeps running.
    pids = _pids_of(host)
    assert pids, "the BMC and QEMU pid files exist while the lab is up"
    if vlab["shared"]:
        # The lab belongs to whoever brought it up (scripts/test-framework
        # stops it and checks these pids are gone); it must still be whole.
        assert all(Path(f"/proc/{p}").exists() for p in pids), pids
        return
    assert launcher.down(vlab["state"], progress=print) == 1
    time.sleep(0.5)
    alive = [p for p in pids if Path(f"/proc/{p}").exists()
             and Path(f"/proc/{p}/stat").read_text().split(") ")[1][0] != "Z"]
    assert not alive, f"processes left after down: {alive}"


def test_guest_host_key_converts_to_dropbears_format(tmp_path):
    keys = builder.ensure_keys(tmp_path / "keys")
    data, pin = guestkit.dropbear_ed25519_key(keys.guest_host_key)
    assert pin.split()[:2] == keys.public(keys.guest_host_key).split()[:2]
    # string "ssh-ed25519", then string seed||public: 4+11 + 4+64 bytes.
    assert data[:15] == b"\x00\x00\x00\x0bssh-ed25519" and len(data) == 15 + 4 + 64
    assert data[-32:] == __import__("base64").b64decode(pin.split()[1])[-32:]
    dropbearkey = shutil.which("dropbearkey")
    if dropbearkey:  # dropbear's own tool reads it back to the same public key
        (tmp_path / "db").write_bytes(data)
        out = subprocess.run([dropbearkey, "-y", "-f", str(tmp_path / "db")], capture_output=True,
                             text=True, check=True).stdout
        assert " ".join(pin.split()[:2]) in out


def test_a_lab_just_stopped_does_not_block_the_next_one(tmp_path):
    """`xenhil lab down && xenhil lab up` at once: the stopped lab's closed SSH
    connections linger in TIME_WAIT on the host's address and port, which a
    bind without SO_REUSEADDR takes for a port in use (seen here: "vhost1:
    127.0.0.11:22/tcp is in use" with nothing listening)."""
    import socket
    host = launcher.plan_hosts(1, tmp_path, address_base=90)[0]
    listener = socket.create_server((host.address, 0))
    host = dataclasses.replace(host, ssh_port=listener.getsockname()[1])
    client = socket.create_connection((host.address, host.ssh_port))
    served, _ = listener.accept()
    served.close()        # the side bound to the host's port closes first: TIME_WAIT there
    listener.close()
    client.close()
    launcher._check_free(host)   # no VirtualLabError
    with socket.create_server((host.address, host.ssh_port)):
        with pytest.raises(launcher.VirtualLabError, match="in use"):
            launcher._check_free(host)   # a real listener is still refused
