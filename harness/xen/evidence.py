"""Evidence gathered when a host or guest step fails: what a developer
needs to debug without the host, copied into the test's artifact folder."""
from __future__ import annotations

import logging
from pathlib import Path

from xenhil.harness.errors import XenhilError

log = logging.getLogger("xenhil.evidence")

# name of the file -> command on the host
HOST_COMMANDS = {
    "xl-dmesg.txt": "xl dmesg",
    "xl-rangesets.txt": "xl debug-keys q >/dev/null && xl dmesg | tail -n 400",
    "xl-list-l.json": "xl list -l",
    "xl-info.txt": "xl info",
    "dom0-dmesg.txt": "dmesg | tail -n 300",
    "processes.txt": "ps -eo pid,ppid,stat,etime,args | grep -E 'qemu|xl|xenstore|xenconsole' | grep -v grep",
}


def collect(host, dest: Path, extra_files: dict[str, Path] | None = None) -> dict[str, str]:
    """Gather every piece it can; one failing piece never stops the others.
    Returns {name: path} of what was saved."""
    dest.mkdir(parents=True, exist_ok=True)
    saved: dict[str, str] = {}
    for name, command in HOST_COMMANDS.items():
        try:
            result = host.ssh.run(command, timeout=60)
            (dest / name).write_text(result.stdout + (f"\n[stderr]\n{result.stderr}" if result.stderr else ""))
            saved[name] = str(dest / name)
        except XenhilError as exc:
            (dest / f"{name}.unavailable").write_text(str(exc))
    try:
        logs = host.ssh.run("ls /var/log/xen/ 2>/dev/null", timeout=30).stdout.split()
        for log_name in logs:
            if log_name.startswith(("qemu-dm-", "xl-")):
                local = dest / "xen-logs" / log_name
                local.parent.mkdir(exist_ok=True)
                local.write_bytes(host.ssh.read_bytes(f"/var/log/xen/{log_name}"))
                saved[f"xen-logs/{log_name}"] = str(local)
    except XenhilError as exc:
        log.warning("%s: could not fetch /var/log/xen: %s", host.name, exc)
    for name, path in (extra_files or {}).items():
        if Path(path).exists():
            saved[name] = str(path)
    return saved
