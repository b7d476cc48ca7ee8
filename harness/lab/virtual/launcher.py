"""Start and stop a virtual lab: N emulated Xen hosts on this machine.

Each host ``vhostK`` is a QEMU (settings: :mod:`harness.lab.virtual.quirks`)
booting the cached dom0 image (:mod:`harness.lab.virtual.builder`) from its
own qcow2 overlay, so hosts never share writes.  It gets its own loopback
address ``127.0.0.(ADDRESS_BASE+K)`` carrying, like a real host:

- SSH: QEMU user networking forwards ``ADDRESS:22`` to dom0 (10.0.2.15);
- serial: a QEMU chardev TCP server on ``ADDRESS:SERIAL_PORT`` with Xen's
  console (and dom0's hvc0 through it).  It does not wait for a client
  (``wait=off``): output while nobody is attached is not sent anywhere, but
  every byte also goes to ``serial.log`` (``logfile=``, appended across
  power cycles), the full transcript;
- power: the virtual BMC (:mod:`harness.lab.virtual.bmc`) on
  ``ADDRESS:623``/udp owns the QEMU process: ``ipmitool -I lanplus -H
  ADDRESS -U admin -E power cycle`` restarts it (firmware, GRUB, Xen, dom0).

``up()`` writes the state (``state.json``: pids files, ports) under the state
directory before anything runs, and a normal inventory (``lab/virtual.yaml``)
with the pinned host key, so every other part of xenhil uses the virtual
hosts like real ones.  ``down()`` stops everything by pid (BMC, then QEMU's
process group), also after a crashed ``up``.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from xenhil.harness.errors import ConfigError, FatalConsoleOutput, InfrastructureError
from xenhil.harness.lab.virtual import builder, quirks
from xenhil.harness.step import step

ADDRESS_BASE = 10          # vhostK listens on 127.0.0.(10+K)
SSH_PORT = 22
SERIAL_PORT = 5555
BMC_PORT = 623
BMC_USER = "admin"
PASSWORD_ENV = "XENHIL_VLAB_BMC_PASSWORD"
DOM0_ADDRESS = "10.0.2.15"   # fixed dom0 address inside QEMU user networking
GUEST_DHCP_START = "10.0.2.100"  # guests' DHCP leases start here, away from dom0
STATE_FILE = "state.json"

# Seen on the serial line when the host cannot come up: stop waiting at once.
FATAL_PATTERNS = [re.compile(p) for p in (
    rb"Panic on CPU \d+", rb"Kernel panic - not syncing", rb"\(XEN\) \*\*\*\*\*\*\*\*\*\*\*\*",
    rb"error: (file|disk) .* not found", rb"Reboot disabled on cmdline")]

Progress = Callable[[str], None]


class VirtualLabError(InfrastructureError):
    help = ("The virtual lab failed to start: read the host's serial.log and bmc logs in the "
            "state directory, then `xenhil lab down` and retry.")


def repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def default_state_dir() -> Path:
    return repo_root() / "lab" / "virtual" / "state"


def default_inventory_path() -> Path:
    return repo_root() / "lab" / "virtual.yaml"


@dataclass
class VirtualHost:
    """One emulated host of the lab and where its files are."""

    name: str
    index: int
    address: str
    ssh_port: int
    serial_port: int
    bmc_port: int
    directory: Path

    @property
    def overlay(self) -> Path:
        return self.directory / "disk.qcow2"

    @property
    def serial_log(self) -> Path:
        return self.directory / "serial.log"

    @property
    def bmc_pidfile(self) -> Path:
        return self.directory / "bmc.pid"

    @property
    def machine_pidfile(self) -> Path:
        return self.directory / "bmc-machine.pid"

    @property
    def qmp_socket(self) -> Path:
        return self.directory / "qmp.sock"

    def to_json(self) -> dict:
        data = asdict(self)
        data["directory"] = str(self.directory)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "VirtualHost":
        return cls(**{**data, "directory": Path(data["directory"])})


def plan_hosts(n: int, state_dir: Path, *, address_base: int = ADDRESS_BASE,
               ssh_port: int | None = None, bmc_port: int | None = None) -> list[VirtualHost]:
    """Names, addresses and ports of ``n`` hosts (no side effects)."""
    if not 1 <= n <= 200:
        raise ConfigError(f"--virtual {n}: the virtual lab has 1 to 200 hosts",
                          help="pass a host count such as --virtual 1")
    if not 1 <= address_base + n <= 254:
        raise ConfigError(f"address base {address_base} + {n} hosts leaves 127.0.0.0/24",
                          help="use a smaller address base")
    ssh_port = ssh_port or _usable_port(SSH_PORT, 10022)
    bmc_port = bmc_port or _usable_port(BMC_PORT, 10623)
    return [VirtualHost(name=f"vhost{k}", index=k, address=f"127.0.0.{address_base + k}",
                        ssh_port=ssh_port, serial_port=SERIAL_PORT, bmc_port=bmc_port,
                        directory=state_dir / f"vhost{k}")
            for k in range(1, n + 1)]


def _usable_port(privileged: int, fallback: int) -> int:
    """The standard port as root; a high one when we may not bind it."""
    if os.geteuid() == 0:
        return privileged
    try:
        start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        start = 1024
    return privileged if privileged >= start else fallback


def qemu_argv(host: VirtualHost) -> list[str]:
    """The QEMU command line of one host (the BMC runs it)."""
    nic = (f"user,model={quirks.NIC_MODEL},net=10.0.2.0/24,dhcpstart={GUEST_DHCP_START},"
           f"hostfwd=tcp:{host.address}:{host.ssh_port}-{DOM0_ADDRESS}:22")
    serial = (f"socket,id=serial0,host={host.address},port={host.serial_port},server=on,"
              f"wait=off,logfile={host.serial_log},logappend=on")
    return [quirks.QEMU_BINARY, "-name", f"xenhil-{host.name}", "-nodefaults",
            *quirks.qemu_machine_args(), "-display", "none",
            "-drive", f"file={host.overlay},if={quirks.DISK_INTERFACE},format=qcow2",
            "-nic", nic, "-chardev", serial, "-serial", "chardev:serial0",
            "-qmp", f"unix:{host.qmp_socket},server=on,wait=off"]


def find_emulator(name: str, address: str) -> int | None:
    """The pid of the QEMU process emulating host ``name`` at ``address`` on
    this machine (the command line :func:`qemu_argv` gives it: the QEMU
    binary, its ``-name`` and its serial socket's address), or None when
    none runs here.  The BMC that started it carries the same arguments
    after its own; its argv[0] is Python's."""
    wanted_name, wanted_address = f"xenhil-{name}", f"host={address},"
    binary = os.path.basename(quirks.QEMU_BINARY)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue                  # gone, or not ours to read
        args = [a.decode(errors="replace") for a in argv]
        if os.path.basename(args[0]) != binary:
            continue
        named = any(a == "-name" and b == wanted_name for a, b in zip(args, args[1:]))
        if named and any(wanted_address in a for a in args):
            return int(entry.name)
    return None


# --- state ------------------------------------------------------------------

def _state_path(state_dir: Path) -> Path:
    return state_dir / STATE_FILE


def read_state(state_dir: Path) -> dict | None:
    try:
        return json.loads(_state_path(state_dir).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise VirtualLabError(f"{_state_path(state_dir)} is unreadable: {exc}",
                              help="remove the state directory after checking no qemu runs") from None


def _write_state(state_dir: Path, hosts: list[VirtualHost], image: builder.BuiltImage | None,
                 inventory: Path | None) -> None:
    state = {"hosts": [h.to_json() for h in hosts],
             "image": str(image.disk) if image else None,
             "inventory": str(inventory) if inventory else None,
             "password_env": PASSWORD_ENV}
    tmp = _state_path(state_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.replace(_state_path(state_dir))


def _bmc_password(state_dir: Path) -> str:
    """The lab's BMC password: $XENHIL_VLAB_BMC_PASSWORD, else one made for
    this state dir and kept in a 0600 file (so a later shell can export it)."""
    value = os.environ.get(PASSWORD_ENV)
    if value:
        return value
    path = state_dir / "bmc-password"
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(12)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")
    return value


# --- inventory ------------------------------------------------------------------

def inventory_text(hosts: list[VirtualHost], image: builder.BuiltImage, state_dir: Path) -> str:
    """A normal xenhil inventory for the virtual hosts (validates with load_inventory)."""
    # The BMC password by reference: the variable when the lab was started with
    # it set, else the 0600 file `up` generated, so `pytest --lab` needs no export.
    generated = state_dir / "bmc-password"
    password_ref = (f"{{file: {generated}}}" if generated.exists() else f"{{env: {PASSWORD_ENV}}}")
    lines = ["# Written by `xenhil lab up --virtual N` (harness/lab/virtual/launcher.py).",
             "# Emulated Xen hosts on this machine; `xenhil lab down` stops them.",
             f"lease_db: sqlite://{state_dir / 'leases.sqlite'}",
             "hosts:"]
    for h in hosts:
        lines += [
            f"  - name: {h.name}",
            f"    address: {h.address}",
            "    tags: [virtual, amd]",
            "    capabilities:",
            "      cpu_vendor: amd",
            "      virt: svm",
            "      emulated: true",
            f"      ram_mb: {quirks.MEMORY_MB}",
            f"      cpus: {quirks.SMP}",
            "    ssh:",
            "      user: root",
            f"      port: {h.ssh_port}",
            f"      key_file: {image.keys.client_key}",
            f'      host_key: "{image.keys.host_key_pin()}"',
            "    serial:",
            "      kind: tcp",
            f"      host: {h.address}",
            f"      port: {h.serial_port}",
            "    power:",
            "      kind: ipmi",
            f"      address: {h.address}",
            f"      port: {h.bmc_port}",
            f"      user: {BMC_USER}",
            f"      password: {password_ref}",
        ]
    return "\n".join(lines) + "\n"


# --- up / down ---------------------------------------------------------------

def _check_free(host: VirtualHost) -> None:
    for kind, port in ((socket.SOCK_STREAM, host.ssh_port), (socket.SOCK_STREAM, host.serial_port),
                       (socket.SOCK_DGRAM, host.bmc_port)):
        with socket.socket(socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:
                # As QEMU's hostfwd listener does: connections of the lab just
                # stopped linger in TIME_WAIT for a minute and must not make
                # `lab down && lab up` fail.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host.address, port))
            except OSError as exc:
                proto = "tcp" if kind == socket.SOCK_STREAM else "udp"
                raise VirtualLabError(
                    f"{host.name}: {host.address}:{port}/{proto} is in use ({exc.strerror})",
                    help="a lab is already up (`xenhil lab down`), or another service "
                         "listens on all addresses at that port") from None


def _ssh_banner(address: str, port: int, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def _serial_fatal(host: VirtualHost, offset: int) -> str | None:
    try:
        with open(host.serial_log, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return None
    for pattern in FATAL_PATTERNS:
        match = pattern.search(data)
        if match:
            return match.group(0).decode(errors="replace")
    return None


def serial_tail(host: VirtualHost, lines: int = 25) -> str:
    try:
        text = host.serial_log.read_bytes()[-20000:].decode(errors="replace")
    except OSError:
        return "(no serial output)"
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "")
    return "\n".join(text.splitlines()[-lines:])


@step("wait for dom0 SSH on {host.name}")
def wait_for_ssh(host: VirtualHost, timeout: float = quirks.DOM0_BOOT_TIMEOUT_S,
                 serial_offset: int = 0, machine_alive: Callable[[], bool] | None = None) -> float:
    """Wait until dom0's sshd answers; returns the seconds waited.  Fails
    early on a fatal console line or a dead QEMU, with the serial tail."""
    started = time.monotonic()
    while True:
        if _ssh_banner(host.address, host.ssh_port):
            return time.monotonic() - started
        fatal = _serial_fatal(host, serial_offset)
        if fatal:
            raise FatalConsoleOutput(f"{host.name}: {fatal!r} on the serial console\n"
                                     f"{serial_tail(host)}",
                                     evidence={"serial": str(host.serial_log)})
        if machine_alive is not None and not machine_alive():
            raise VirtualLabError(f"{host.name}: QEMU exited during boot\n{serial_tail(host)}",
                                  evidence={"serial": str(host.serial_log),
                                            "qemu log": str(host.directory / "bmc-machine.log")})
        if time.monotonic() - started > timeout:
            raise VirtualLabError(f"{host.name}: dom0 SSH not answering on "
                                  f"{host.address}:{host.ssh_port} after {timeout:.0f}s\n"
                                  f"{serial_tail(host)}",
                                  evidence={"serial": str(host.serial_log)})
        time.sleep(2)


def _machine_alive(host: VirtualHost) -> bool:
    try:
        pid = int(host.machine_pidfile.read_text())
    except (OSError, ValueError):
        return False
    return Path(f"/proc/{pid}").exists()


def check_qemu_version(binary: str = quirks.QEMU_BINARY) -> tuple[int, int]:
    """The lab QEMU's version, refused below :data:`quirks.QEMU_MIN_VERSION`
    (bookworm's own 7.2 crashes guests: see quirks.py) before anything starts."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"{binary} --version failed: {exc}", help=quirks.QEMU_FIX) from None
    version = quirks.qemu_version(out)
    wanted = ".".join(map(str, quirks.QEMU_MIN_VERSION))
    if version is None:
        raise ConfigError(f"{binary} --version did not print a QEMU version "
                          f"({out.strip()[:80]!r})", help=quirks.QEMU_FIX)
    if version < quirks.QEMU_MIN_VERSION:
        raise ConfigError(f"{binary} is QEMU {version[0]}.{version[1]}; the virtual lab needs "
                          f"{wanted} or later (guests crash under the older one's nested SVM)",
                          help=quirks.QEMU_FIX)
    return version


@step("virtual lab up: {n} host(s)")
def up(n: int, workdir: Path | str | None = None, *, inventory: Path | str | None = None,
       image: builder.BuiltImage | None = None, progress: Progress | None = None,
       wait: bool = True, timeout: float = quirks.DOM0_BOOT_TIMEOUT_S,
       address_base: int = ADDRESS_BASE) -> list[VirtualHost]:
    """Start ``n`` virtual hosts; return them once dom0 SSH answers on each.

    ``workdir``: the state directory (default ``lab/virtual/state``).
    ``inventory``: where to write the inventory (default ``lab/virtual.yaml``).
    On any failure everything started is stopped again (logs are kept)."""
    progress = progress or builder._default_progress
    state_dir = Path(workdir) if workdir else default_state_dir()
    inventory_path = Path(inventory) if inventory else default_inventory_path()
    state = read_state(state_dir)
    if state and state.get("hosts"):
        raise VirtualLabError(f"a virtual lab is already up (state in {state_dir})",
                              help="run `xenhil lab down` first")
    for tool in (quirks.QEMU_BINARY, "qemu-img"):
        if shutil.which(tool) is None:
            raise ConfigError(f"{tool} not found", help=quirks.QEMU_FIX)
    check_qemu_version()
    hosts = plan_hosts(n, state_dir, address_base=address_base)
    for host in hosts:
        _check_free(host)
    image = image or builder.build(progress=progress)
    state_dir.mkdir(parents=True, exist_ok=True)
    password = _bmc_password(state_dir)
    env = {**os.environ, PASSWORD_ENV: password}
    os.environ.setdefault(PASSWORD_ENV, password)  # so this process's power driver finds it
    from xenhil.harness.lab.virtual.bmc import start_bmc_process

    started: list[VirtualHost] = []
    try:
        for host in hosts:
            shutil.rmtree(host.directory, ignore_errors=True)
            host.directory.mkdir(parents=True)
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                            "-b", str(image.disk), str(host.overlay)], check=True,
                           capture_output=True)
            started.append(host)
            _write_state(state_dir, started, image, None)  # before the start: down() finds it
            start_bmc_process(host.address, host.bmc_port, BMC_USER, PASSWORD_ENV,
                              qemu_argv(host), host.directory, env=env, power_on=True, name="bmc")
            progress(f"{host.name}: powered on (ssh {host.address}:{host.ssh_port}, serial "
                     f"{host.address}:{host.serial_port}, bmc {host.address}:{host.bmc_port}/udp)")
        inventory_path.parent.mkdir(parents=True, exist_ok=True)
        inventory_path.write_text(inventory_text(hosts, image, state_dir))
        _write_state(state_dir, started, image, inventory_path)
        if wait:
            t0 = time.monotonic()
            for host in hosts:
                remaining = max(1.0, timeout - (time.monotonic() - t0))
                wait_for_ssh(host, remaining, machine_alive=lambda h=host: _machine_alive(h))
                progress(f"{host.name}: dom0 SSH up after {time.monotonic() - t0:.0f}s")
    except BaseException:
        down(state_dir, progress=progress)
        raise
    return hosts


def _stop_host(host: VirtualHost) -> None:
    from xenhil.harness.lab.virtual.bmc import stop_bmc_pidfile
    stop_bmc_pidfile(host.bmc_pidfile, host.machine_pidfile)


@step("virtual lab down")
def down(workdir: Path | str | None = None, *, progress: Progress | None = None,
         remove_disks: bool = True) -> int:
    """Stop every host of the lab in ``workdir`` by pid; returns how many.

    Serial logs and BMC logs stay (evidence); overlays go unless asked not to."""
    progress = progress or builder._default_progress
    state_dir = Path(workdir) if workdir else default_state_dir()
    state = read_state(state_dir)
    if not state:
        progress(f"no virtual lab in {state_dir}")
        return 0
    hosts = [VirtualHost.from_json(h) for h in state.get("hosts", [])]
    errors = []
    for host in hosts:
        try:
            _stop_host(host)
            progress(f"{host.name}: stopped")
        except Exception as exc:  # keep stopping the others
            errors.append(f"{host.name}: {exc}")
        if remove_disks:
            host.overlay.unlink(missing_ok=True)
        host.qmp_socket.unlink(missing_ok=True)
    inventory = state.get("inventory")
    if inventory:
        Path(inventory).unlink(missing_ok=True)
    _state_path(state_dir).unlink(missing_ok=True)
    if errors:
        raise VirtualLabError("some hosts did not stop cleanly:\n" + "\n".join(errors))
    return len(hosts)
