"""A virtual BMC: an IPMI-over-LAN (lanplus) server that powers a *machine*.

The virtual lab gives every emulated host the same power path as a real
server: ``ipmitool -I lanplus ... chassis power on|off|cycle|reset|status``
against a BMC address.  This module is that BMC, after OpenStack's
virtualbmc, built on pyghmi's :class:`pyghmi.ipmi.bmc.Bmc`.  What it powers is
a :class:`Machine`; :class:`ProcessMachine` runs a command (QEMU) in its own
process group, so "power off" kills QEMU and everything it started.

Command line (what the virtual lab launcher runs; it daemonises nothing, the
caller starts it in the background and keeps the pid)::

    python -m xenhil.harness.lab.virtual.bmc \\
        --address 127.0.0.5 --port 623 \\
        --user admin --password-env XENHIL_BMC_PASSWORD \\
        --pidfile /run/dir/bmc.pid --log /run/dir/bmc.log \\
        [--machine-log /run/dir/machine.log] \\
        [--machine-pidfile /run/dir/machine.pid] \\
        [--power-on] [--sol-tcp 127.0.0.1:5001] \\
        -- qemu-system-x86_64 -machine pc ...

- ``--password-env`` names the environment variable holding the password
  (at most 20 bytes, the IPMI v2 limit); it never appears on a command line.
- Port 623 (the default) is privileged; tests use free high ports.
- ``--pidfile`` is written (the BMC's own pid) once the UDP socket is bound,
  so a starter may wait for it to know the BMC answers.  Removed on exit.
- ``--machine-pidfile`` holds the machine's pid while it runs (absent while
  powered off).  ``--machine-log`` receives the machine's stdout and stderr
  (default: the ``--log`` file).
- ``--power-on`` starts the machine at once; by default it starts off, like
  a server whose BMC has just come up.
- On SIGTERM or SIGINT the BMC powers the machine off (SIGTERM to its process
  group, SIGKILL after a grace period) and exits 0: it never leaves the
  machine running behind it.

IPMI semantics (as on common real BMCs): ``power on`` when on and ``power
off`` when off succeed and do nothing; ``power cycle`` and ``power reset``
when off fail with completion code 0xd5 ("not supported in present state"),
which ipmitool reports as an error.  ``power soft`` is not supported (a
process has no ACPI power button).

Serial-over-LAN: with ``--sol-tcp HOST:PORT`` the BMC offers SOL
(``ipmitool ... sol activate`` works against pyghmi's SOL server) and, on
each activation while the machine runs, connects to the machine's TCP serial
at HOST:PORT (e.g. a QEMU ``-serial tcp:...,server,nowait`` chardev) and
bridges bytes both ways.  Without it SOL activation is refused (0x81), and
the virtual lab reads its consoles from the TCP serial directly (a QEMU
socket chardev serves one client at a time: use one path or the other).  A
power cycle ends the bridged connection with the old machine: reactivate
SOL to reach the new one.  As on real
BMCs, a client that vanishes without ``sol deactivate`` leaves the payload
"already active" until ``ipmitool ... sol deactivate``.

:func:`start_bmc_process` starts this daemon from Python and returns a
:class:`BMCProcess` whose ``stop()`` ends it (and its machine) by pid;
:func:`stop_bmc_pidfile` does the same later, from another process, given
the pid files (``xenhil lab down``).
"""
from __future__ import annotations

import abc
import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from xenhil.harness.errors import InfrastructureError, ConfigError

log = logging.getLogger("xenhil.bmc")

# IPMI completion code: "Command not supported in present state".
CC_NOT_IN_PRESENT_STATE = 0xD5

# Marker looked for in /proc/<pid>/cmdline before signalling a pid read from a
# file, so a stale pid file can never make us kill an unrelated process.
BMC_MODULE = "xenhil.harness.lab.virtual.bmc"


class BMCError(InfrastructureError):
    help = "The virtual BMC failed to start or stop: read its log."


# --------------------------------------------------------------------------
# Machines

class Machine(abc.ABC):
    """Something a BMC powers.  ``stop`` is a hard power-off."""

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    @abc.abstractmethod
    def reset(self) -> None: ...

    @abc.abstractmethod
    def is_running(self) -> bool: ...


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def kill_process_group(pgid: int, grace: float = 5.0) -> None:
    """SIGTERM a process group, then SIGKILL whatever is left after ``grace``.

    Waits until the group is empty or only zombies remain (members that
    are our children are reaped by the caller)."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _group_has_live_members(pgid):
        time.sleep(0.05)
    if _group_alive(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _group_has_live_members(pgid: int) -> bool:
    """True when some non-zombie process is in group ``pgid``."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # fields after the ")" closing the command name: state ppid pgrp ...
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


class ProcessMachine(Machine):
    """A command run as a machine: power on starts it in a new session (so
    its own process group), power off kills the whole group."""

    def __init__(self, argv: Sequence[str], log_path: Path | str,
                 pidfile: Path | str | None = None, stop_grace: float = 5.0):
        if not argv:
            raise ConfigError("ProcessMachine needs a command", help="give the machine's argv after --")
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.pidfile = Path(pidfile) if pidfile else None
        self.stop_grace = stop_grace
        self._proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def is_running(self) -> bool:
        if self._proc is None:
            return False
        if self._proc.poll() is None:
            return True
        # It exited by itself (QEMU -no-reboot, a crash): the pid file must not
        # name a dead pid; stop() still sweeps the group for leftovers.
        if self.pidfile:
            self.pidfile.unlink(missing_ok=True)
        return False

    def start(self) -> None:
        if self.is_running():
            return
        self._reap()
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        if self.pidfile:
            self.pidfile.write_text(f"{self._proc.pid}\n")
        log.info("machine started: pid %d", self._proc.pid)

    def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        # The machine leads its own group (start_new_session): pgid == pid.
        # Kill the group even if the leader already exited: its children may not have.
        kill_process_group(proc.pid, self.stop_grace)
        try:
            proc.wait(timeout=self.stop_grace)
        except subprocess.TimeoutExpired:  # SIGKILLed above; cannot really happen
            proc.kill()
            proc.wait()
        log.info("machine stopped: pid %d, exit %s", proc.pid, proc.returncode)
        self._reap()

    def reset(self) -> None:
        # A process has no reset line: a hard reset is off then on (new pid).
        self.stop()
        self.start()

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None
            if self.pidfile:
                self.pidfile.unlink(missing_ok=True)


# --------------------------------------------------------------------------
# The IPMI server

def _make_bmc_class():
    # Imported lazily: pyghmi starts an I/O thread on first socket, and the
    # pure helpers of this module (stop by pidfile) should not need it.
    from pyghmi.ipmi import bmc as pyghmi_bmc

    class MachineBmc(pyghmi_bmc.Bmc):
        """pyghmi Bmc whose chassis is a :class:`Machine`."""

        def __init__(self, machine: Machine, user: str, password: str, address: str, port: int,
                     sol_tcp: tuple[str, int] | None = None):
            super().__init__({user: password}, port=port, address=address)
            self.machine = machine
            self.boot_device = "default"
            self.lock = threading.Lock()
            self.closing = False
            self.sol_tcp = sol_tcp
            self._sol_sock: socket.socket | None = None
            if sol_tcp is not None:
                # pyghmi offers SOL only when an iohandler is set
                self.iohandler = self._sol_from_client

        # -- Serial over LAN: bridged to the machine's TCP serial ----------

        def is_active(self):
            return self.machine.is_running()

        def activate_payload(self, request, session):
            if self.sol_tcp is not None and self.is_active() and not self.activated:
                try:
                    sock = socket.create_connection(self.sol_tcp, timeout=5)
                except OSError as exc:
                    log.warning("SOL: cannot reach the machine's serial at %s:%d: %s",
                                *self.sol_tcp, exc)
                    return session.send_ipmi_response(code=0x81)
                sock.settimeout(None)
                super().activate_payload(request, session)
                if not self.activated:
                    sock.close()
                    return
                self._sol_sock = sock
                threading.Thread(target=self._sol_to_client, args=(sock, self.sol),
                                 name="sol-reader", daemon=True).start()
                log.info("SOL activated, bridged to %s:%d", *self.sol_tcp)
                return
            return super().activate_payload(request, session)

        def deactivate_payload(self, request, session):
            super().deactivate_payload(request, session)
            self._close_sol_socket()
            log.info("SOL deactivated")

        def _close_sol_socket(self):
            sock, self._sol_sock = self._sol_sock, None
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

        def _sol_from_client(self, data):
            sock = self._sol_sock
            if sock is not None:
                try:
                    sock.sendall(data if isinstance(data, (bytes, bytearray)) else data.encode())
                except OSError:
                    self._close_sol_socket()

        def _sol_to_client(self, sock, console):
            while True:
                try:
                    data = sock.recv(4096)
                except OSError:
                    break
                if not data:
                    break
                console.send_data(data)

        def get_power_state(self):
            return "on" if self.machine.is_running() else "off"

        def power_on(self):
            with self.lock:
                log.info("IPMI: power on")
                if self.closing:
                    return CC_NOT_IN_PRESENT_STATE
                self.machine.start()

        def power_off(self):
            with self.lock:
                log.info("IPMI: power off")
                self.machine.stop()

        def power_cycle(self):
            with self.lock:
                log.info("IPMI: power cycle")
                if self.closing or not self.machine.is_running():
                    return CC_NOT_IN_PRESENT_STATE
                self.machine.stop()
                self.machine.start()

        def power_reset(self):
            with self.lock:
                log.info("IPMI: power reset")
                if self.closing or not self.machine.is_running():
                    return CC_NOT_IN_PRESENT_STATE
                self.machine.reset()

        def get_system_guid(self):
            return self.uuid

        def get_boot_device(self):
            return self.boot_device

        def set_boot_device(self, bootdevice):
            self.boot_device = bootdevice

        def cold_reset(self):
            return 0xC1  # the BMC itself does not restart

    return MachineBmc


def serve(machine: Machine, *, address: str, port: int, user: str, password: str,
          pidfile: Path | None = None, power_on: bool = False,
          sol_tcp: tuple[str, int] | None = None) -> int:
    """Run the BMC until SIGTERM/SIGINT; power the machine off on the way out."""
    bmc = _make_bmc_class()(machine, user, password, address, port, sol_tcp)
    from pyghmi.ipmi.private import session as ipmisession

    # pyghmi wakes its I/O thread by sending a byte from its first socket to
    # (session.myself, that socket's port).  When the first socket is this
    # IPv4 server socket, pyghmi guesses an IPv6 "myself" that an AF_INET
    # socket cannot send to, the wake-ups fail and requests stall until the
    # next packet (seen: 15 s before SOL output flowed).  Point it at our own
    # address: the 1-byte wake packet is then ignored by the BMC as non-IPMI.
    if ipmisession.iosockets and ipmisession.iosockets[0] is bmc.serversocket:
        ipmisession.myself = bmc.serversocket.getsockname()[0]

    # pyghmi's event loop (wait_for_rsp) can block well past its timeout
    # (seen: 20 s after the last session), so it runs in a daemon thread and
    # the main thread only waits for a signal.  Requests are handled in the
    # loop thread; bmc.lock serialises them with the shutdown below.
    stopping = threading.Event()

    def on_signal(signum, frame):
        stopping.set()

    def event_loop():
        while True:
            ipmisession.Session.wait_for_rsp(timeout=1)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if power_on:
            machine.start()
        threading.Thread(target=event_loop, name="ipmi-loop", daemon=True).start()
        if pidfile:
            pidfile.write_text(f"{os.getpid()}\n")
        log.info("BMC listening on %s:%d (user %s)", address, port, user)
        while not stopping.wait(0.5):
            pass
        log.info("BMC stopping on signal")
    finally:
        with bmc.lock:
            bmc.closing = True   # a request still in flight must not power on again
            machine.stop()
        if pidfile:
            pidfile.unlink(missing_ok=True)
        log.info("BMC stopped")
    return 0


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {BMC_MODULE}",
        description="Virtual IPMI (lanplus) BMC powering a command as a machine.")
    parser.add_argument("--address", required=True, help="IP address to listen on (127.0.0.x)")
    parser.add_argument("--port", type=int, default=623, help="UDP port (default 623)")
    parser.add_argument("--user", required=True, help="IPMI user name")
    parser.add_argument("--password-env", required=True,
                        help="name of the environment variable holding the IPMI password")
    parser.add_argument("--pidfile", type=Path, help="write the BMC's pid here once listening")
    parser.add_argument("--log", type=Path, required=True, help="BMC log file")
    parser.add_argument("--machine-log", type=Path, help="machine stdout/stderr (default: --log)")
    parser.add_argument("--machine-pidfile", type=Path, help="machine pid, present while powered on")
    parser.add_argument("--power-on", action="store_true", help="start the machine at once")
    parser.add_argument("--sol-tcp", metavar="HOST:PORT", type=_host_port,
                        help="offer Serial-over-LAN, bridged to the machine's TCP serial here")
    parser.add_argument("machine", nargs=argparse.REMAINDER, help="-- ARGV of the machine")
    args = parser.parse_args(argv)
    machine_argv = args.machine[1:] if args.machine[:1] == ["--"] else args.machine
    if not machine_argv:
        parser.error("give the machine's command after --")
    password = os.environ.get(args.password_env)
    if not password:
        parser.error(f"environment variable {args.password_env} (--password-env) is not set or empty")
    if len(password.encode()) > 20:
        parser.error(f"the password in {args.password_env} is longer than 20 bytes "
                     "(the IPMI v2 limit; ipmitool would refuse it)")

    logging.basicConfig(filename=args.log, level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    machine = ProcessMachine(machine_argv, args.machine_log or args.log, args.machine_pidfile)
    try:
        return serve(machine, address=args.address, port=args.port, user=args.user,
                     password=password, pidfile=args.pidfile, power_on=args.power_on,
                     sol_tcp=args.sol_tcp)
    except OSError as exc:
        log.error("BMC failed: %s", exc)
        print(f"virtual BMC: {exc}", file=sys.stderr)
        machine.stop()
        return 1


# --------------------------------------------------------------------------
# Starting and stopping the daemon from Python

def _pid_is_bmc(pid: int) -> bool:
    """True when ``pid`` is a live (non-zombie) virtual BMC process."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = state[state.rfind(")") + 2:].split()[0]
    return BMC_MODULE.encode() in cmdline and state != "Z"


def _read_pid(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def stop_bmc_pidfile(pidfile: Path, machine_pidfile: Path | None = None,
                     timeout: float = 15.0) -> None:
    """Stop a BMC daemon known only by its pid file (e.g. from ``lab down``).

    SIGTERM lets the BMC power its machine off; if it does not exit in
    ``timeout`` it is SIGKILLed and the machine's group is killed here."""
    pid = _read_pid(pidfile)
    machine_pid = _read_pid(machine_pidfile)
    if pid is not None and _pid_is_bmc(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pid_is_bmc(pid):
            time.sleep(0.05)
        if _pid_is_bmc(pid):
            os.kill(pid, signal.SIGKILL)
    # The machine leads its own group; after a clean BMC exit it is already gone.
    if machine_pid is not None and _group_alive(machine_pid):
        kill_process_group(machine_pid)
    pidfile.unlink(missing_ok=True)
    if machine_pidfile:
        machine_pidfile.unlink(missing_ok=True)


@dataclass
class BMCProcess:
    """A running virtual BMC daemon started by :func:`start_bmc_process`."""

    popen: subprocess.Popen
    address: str
    port: int
    user: str
    pidfile: Path
    machine_pidfile: Path
    log_path: Path
    machine_log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def machine_pid(self) -> int | None:
        """The machine's pid while it is powered on, else None."""
        return _read_pid(self.machine_pidfile)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the BMC (it powers its machine off), SIGKILL after ``timeout``;
        make sure the machine's process group is gone.  Returns the BMC's exit status."""
        machine_pid = self.machine_pid()
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if machine_pid is not None and _group_alive(machine_pid):
            kill_process_group(machine_pid)
        self.pidfile.unlink(missing_ok=True)
        self.machine_pidfile.unlink(missing_ok=True)
        return self.popen.returncode

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_bmc_process(address: str, port: int, user: str, password_env: str,
                      argv: Sequence[str], workdir: Path | str, *,
                      env: Mapping[str, str] | None = None, power_on: bool = False,
                      sol_tcp: tuple[str, int] | None = None,
                      name: str = "bmc", ready_timeout: float = 15.0) -> BMCProcess:
    """Start the BMC daemon in the background for machine ``argv``.

    ``password_env`` must be set in ``env`` (default: this process's
    environment).  Files go to ``workdir``: ``<name>.pid``, ``<name>.log``,
    ``<name>-machine.pid``, ``<name>-machine.log``.  Returns once the BMC is
    listening; raises :class:`BMCError` with the log tail if it fails."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    child_env = dict(os.environ if env is None else env)
    if not child_env.get(password_env):
        raise ConfigError(f"BMC password variable {password_env} is not set",
                          help=f"export {password_env}=... (or pass it in env=)")
    pidfile = workdir / f"{name}.pid"
    machine_pidfile = workdir / f"{name}-machine.pid"
    log_path = workdir / f"{name}.log"
    machine_log = workdir / f"{name}-machine.log"
    for stale in (pidfile, machine_pidfile):
        stale.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", BMC_MODULE, "--address", address, "--port", str(port),
           "--user", user, "--password-env", password_env, "--pidfile", str(pidfile),
           "--log", str(log_path), "--machine-log", str(machine_log),
           "--machine-pidfile", str(machine_pidfile)]
    if power_on:
        cmd.append("--power-on")
    if sol_tcp is not None:
        cmd += ["--sol-tcp", f"{sol_tcp[0]}:{sol_tcp[1]}"]
    cmd += ["--", *argv]
    # Own session: a Ctrl-C aimed at the test run must not reach the BMC
    # before the fixture stops it in order.
    with open(workdir / f"{name}.stderr", "ab") as err:
        popen = subprocess.Popen(cmd, env=child_env, stdin=subprocess.DEVNULL,
                                 stdout=err, stderr=err, start_new_session=True)
    bmc = BMCProcess(popen, address, port, user, pidfile, machine_pidfile, log_path, machine_log)
    deadline = time.monotonic() + ready_timeout
    while _read_pid(pidfile) != popen.pid:
        if popen.poll() is not None or time.monotonic() > deadline:
            bmc.stop()
            stderr = (workdir / f"{name}.stderr").read_text(errors="replace")[-2000:]
            raise BMCError(f"virtual BMC on {address}:{port} did not start "
                           f"(exit {popen.returncode}):\n{stderr}\n{bmc.log_tail()}",
                           evidence={"bmc log": str(log_path)})
        time.sleep(0.05)
    return bmc


if __name__ == "__main__":
    sys.exit(main())
