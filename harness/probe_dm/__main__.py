"""``python3 -m xenhil.harness.probe_dm``: run the probe ioreq server in dom0.

    python3 -m xenhil.harness.probe_dm --domid N --ports 0x6100-0x610f \\
        --mmio 0xf0000000-0xf0000fff --bdf 00:05.0 \\
        --counters /run/xenhil-probe-N.json [--log FILE] [--restore-state FILE] \\
        [--fault FAULT]
    python3 -m xenhil.harness.probe_dm --domid N --reap SERVER_ID --counters FILE

Two processes: a small *supervisor* (this process) forks the *server*.  If
the server dies from a signal (SIGKILL, a crash) it cannot destroy its ioreq
server, and the guest would block on the next access to the probe's ranges;
the supervisor then destroys it and marks the counters file ``crashed``.
SIGTERM/SIGINT/SIGHUP/SIGUSR1 sent to the supervisor are passed on.

Exit status: 0 stopped or domain gone, 1 Xen/infrastructure failure,
2 bad arguments or setup (the message says which), 3 the server crashed.

``--reap`` destroys a server left behind (both processes killed): found from
a stale heartbeat in the counters file.
"""
from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from xenhil.harness.errors import ConfigError, XenhilError
from xenhil.harness.probe_dm.emulation import (
    DEFAULT_DEVICE,
    DEFAULT_VENDOR,
    Bdf,
    ProbeDevice,
    parse_range,
)
from xenhil.harness.probe_dm.faults import FAULTS, ProbeFault, parse_fault

log = logging.getLogger("xenhil.probe_dm")

EXIT_OK, EXIT_XEN, EXIT_CONFIG, EXIT_CRASHED = 0, 1, 2, 3


def _hex16(text: str) -> int:
    value = int(text, 16)
    if not 0 <= value <= 0xFFFF:
        raise ValueError(text)
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m xenhil.harness.probe_dm",
                                description="xenhil's probe device model: a second ioreq server")
    p.add_argument("--domid", type=int, required=True, help="the HVM domain to serve")
    p.add_argument("--ports", action="append", default=[],
                   help="port range START-END (inclusive); comma-separated or repeated")
    p.add_argument("--mmio", help="MMIO window START-END: BAR0's size and initial address "
                                  "(with --bdf), else a fixed range")
    p.add_argument("--bdf", help="PCI function to emulate, e.g. 00:05.0")
    p.add_argument("--vendor", type=_hex16, default=DEFAULT_VENDOR, help="PCI vendor id (hex)")
    p.add_argument("--device", type=_hex16, default=DEFAULT_DEVICE, help="PCI device id (hex)")
    p.add_argument("--counters", required=True, type=Path, help="counters JSON file")
    p.add_argument("--log", type=Path, help="append one line per request to this file")
    p.add_argument("--restore-state", type=Path,
                   help="counters file of an earlier probe of this guest (before save/restore): "
                        "scratch registers and PCI config are carried over")
    p.add_argument("--fault", metavar="FAULT",
                   help="plant a fault (a mutant run, never a clean one): "
                        + "; ".join(f"{r.example}: {r.breaks}" for r in FAULTS.values()))
    p.add_argument("--heartbeat", type=float, default=1.0, help="seconds between heartbeats")
    p.add_argument("--no-supervisor", action="store_true",
                   help="serve in this process (no crash supervisor)")
    p.add_argument("--reap", type=int, metavar="SERVER_ID",
                   help="destroy this ioreq server of --domid (left by a killed probe) and exit")
    return p


def build_device(args: argparse.Namespace, log_file=None) -> tuple[ProbeDevice, list, Bdf | None]:
    ports = [parse_range(part, "--ports") for item in args.ports for part in item.split(",") if part]
    if not ports and not args.mmio:
        raise ConfigError("nothing to emulate: give --ports and/or --mmio",
                          help="e.g. --ports 0x6100-0x610f --mmio 0xf0000000-0xf0000fff --bdf 00:05.0")
    for start, end in ports:
        if end > 0xFFFF:
            raise ConfigError(f"--ports: {start:#x}-{end:#x} is beyond port 0xffff",
                              help="x86 I/O ports are 0-0xffff")
    mmio = parse_range(args.mmio, "--mmio") if args.mmio else None
    bdf = Bdf.parse(args.bdf) if args.bdf else None
    fault = fault_of(args, ports)
    device = ProbeDevice(ports, mmio, bdf, vendor=args.vendor, device=args.device, log=log_file,
                         fault=fault)
    if args.restore_state:
        try:
            old = json.loads(args.restore_state.read_text())
            device.restore(old["snapshot"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"--restore-state {args.restore_state}: cannot use it ({exc})",
                              help="give the counters file an earlier probe of this guest wrote") from None
    return device, ports, bdf


def fault_of(args: argparse.Namespace, ports: list) -> ProbeFault | None:
    """--fault parsed; a claimed QEMU range must not overlap the probe's own
    ports (Xen refuses an overlap within one server: EEXIST)."""
    if not args.fault:
        return None
    fault = parse_fault(args.fault, "--fault")
    for start, end in fault.claim_ports:
        for own_start, own_end in ports:
            if start <= own_end and own_start <= end:
                raise ConfigError(f"--fault {fault.text}: overlaps the probe's own ports "
                                  f"{own_start:#x}-{own_end:#x}",
                                  help="claim a range QEMU owns, outside --ports "
                                       "(default 0x170-0x177, the secondary IDE channel)")
    return fault


def serve(args: argparse.Namespace, supervisor_pid: int | None, on_created=None) -> int:
    from xenhil.harness.probe_dm.server import ProbeServer, run_server
    log_file = open(args.log, "a", buffering=1) if args.log else None
    try:
        device, ports, bdf = build_device(args, log_file)
        server = ProbeServer(args.domid, ports, device, args.counters, bdf=bdf,
                             heartbeat=args.heartbeat, supervisor_pid=supervisor_pid,
                             on_created=on_created, fault=device.fault,
                             restoring=args.restore_state is not None)
        return run_server(server)
    finally:
        if log_file:
            log_file.close()


def reap(domid: int, server_id: int, counters: Path | None) -> int:
    from xenhil.harness.probe_dm.server import reap_server
    outcome = reap_server(domid, server_id)
    log.warning("ioreq server %d of domain %d: %s", server_id, domid, outcome)
    if counters is not None:
        _mark(counters, "crashed", f"server {server_id} {outcome} (--reap)")
    return EXIT_OK


def _mark(counters: Path, state: str, error: str) -> None:
    from xenhil.harness.probe_dm.server import write_json_atomically
    try:
        data = json.loads(counters.read_text())
    except (OSError, ValueError):
        data = {}
    data.update(state=state, error=error, heartbeat=time.time())
    data["claimed"] = {"port": [], "memory": [], "pci": []}
    write_json_atomically(counters, data)


def supervise(args: argparse.Namespace) -> int:
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the server
        os.close(read_end)

        def created(server_id: int) -> None:
            os.write(write_end, f"{server_id}\n".encode())

        code = EXIT_CRASHED
        try:
            code = serve(args, os.getppid(), created)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, lambda signum, frame: _forward(child, signum))
    announced = b""
    while chunk := os.read(read_end, 64):
        announced += chunk
    os.close(read_end)
    _, status = os.waitpid(child, 0)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    signum = os.WTERMSIG(status)
    why = f"server process {child} killed by signal {signum} ({signal.Signals(signum).name})"
    log.error("%s", why)
    if announced.strip():
        from xenhil.harness.probe_dm.server import reap_server
        server_id = int(announced.split()[0])
        try:
            why += f"; server {server_id} {reap_server(args.domid, server_id)}"
        except XenhilError as exc:
            why += f"; could not destroy server {server_id}: {exc}"
        log.error("%s", why)
    _mark(args.counters, "crashed", why)
    return EXIT_CRASHED


def _forward(child: int, signum: int) -> None:
    try:
        os.kill(child, signum)
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> int:
    faulthandler.enable()  # a crash leaves the Python stack in the stderr file
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s probe_dm[%(process)d] %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.reap is not None:
            return reap(args.domid, args.reap, args.counters)
        build_device(args)  # bad arguments fail here, before any fork or Xen call
        if args.no_supervisor:
            return serve(args, None)
        return supervise(args)
    except ConfigError as exc:
        print(f"probe_dm: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except XenhilError as exc:
        print(f"probe_dm: {exc}", file=sys.stderr)
        return EXIT_XEN


if __name__ == "__main__":
    sys.exit(main())
