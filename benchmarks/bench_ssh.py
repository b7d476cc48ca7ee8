"""Round trip of ``true`` over SSHConnection.run vs the OpenSSH client with a
ControlMaster, against the same real sshd in the same run.

    cd /work/main && .venv/bin/python -m benchmarks.bench_ssh [-n 200] [--warmup 20]

The two clients are measured interleaved (one call each, in turn), so load
from other processes on the machine hits both alike.  The target is a ratio,
not an absolute time: SSHConnection p50 <= 1.2 x OpenSSH p50.  Exit status 1
when the target is missed.  Results go to benchmarks/results/ssh.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import paramiko

from xenhil.harness.access.ssh import SSHConnection
from tests.support.sshd import running_sshd

TARGET_RATIO = 1.2
RESULTS = Path(__file__).resolve().parent / "results" / "ssh.json"


def percentile(samples: list[float], pct: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[pct - 1]


def summary(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": round(percentile(samples, 50) * 1e3, 3),
            "p90_ms": round(percentile(samples, 90) * 1e3, 3),
            "mean_ms": round(statistics.fmean(samples) * 1e3, 3),
            "min_ms": round(min(samples) * 1e3, 3)}


class OpenSSHMaster:
    """``ssh`` with a persistent ControlMaster; the master is stopped at the end."""

    def __init__(self, server, control_path: Path):
        self.server = server
        self.control = ["-o", "ControlMaster=auto", "-o", f"ControlPath={control_path}",
                        "-o", "ControlPersist=60"]
        self.argv = server.openssh_argv(*self.control)

    def run_true(self) -> None:
        done = subprocess.run([*self.argv, "true"], stdin=subprocess.DEVNULL,
                              capture_output=True)
        if done.returncode != 0:
            raise RuntimeError(f"ssh true failed ({done.returncode}): {done.stderr.decode()}")

    def stop(self) -> None:
        # Find the background master's pid first, so it can be killed by id
        # if the polite "-O exit" does not end it.
        base = self.argv[:-1]
        check = subprocess.run([*base, "-O", "check", self.argv[-1]], capture_output=True,
                               text=True, stdin=subprocess.DEVNULL)
        match = re.search(r"pid=(\d+)", check.stderr + check.stdout)
        subprocess.run([*base, "-O", "exit", self.argv[-1]], capture_output=True,
                       stdin=subprocess.DEVNULL)
        if match:
            pid = int(match.group(1))
            for _ in range(50):
                if not Path(f"/proc/{pid}").exists():
                    return
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)


def openssh_version() -> str:
    return subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="timed calls per client (200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls first (20)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.n < 10:
        parser.error("-n must be at least 10 for percentiles to mean anything")

    with tempfile.TemporaryDirectory(prefix="xenhil-bench-ssh-") as tmp:
        with running_sshd(Path(tmp) / "sshd") as server:
            openssh = OpenSSHMaster(server, Path(tmp) / "cm.sock")
            try:
                with SSHConnection(server.ssh_config(), name="bench") as conn:
                    for _ in range(args.warmup):
                        conn.run("true", check=True)
                        openssh.run_true()
                    ours, theirs = [], []
                    for _ in range(args.n):
                        started = time.perf_counter()
                        conn.run("true", check=True)
                        ours.append(time.perf_counter() - started)
                        started = time.perf_counter()
                        openssh.run_true()
                        theirs.append(time.perf_counter() - started)
            finally:
                openssh.stop()

    mine, ref = summary(ours), summary(theirs)
    ratio_p50 = mine["p50_ms"] / ref["p50_ms"]
    ratio_p90 = mine["p90_ms"] / ref["p90_ms"]
    result = {
        "benchmark": "ssh round trip of `true`",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n": args.n,
        "warmup": args.warmup,
        "xenhil_sshconnection": mine,
        "openssh_controlmaster": ref,
        "ratio_p50": round(ratio_p50, 3),
        "ratio_p90": round(ratio_p90, 3),
        "target_ratio_p50": TARGET_RATIO,
        "meets_target": ratio_p50 <= TARGET_RATIO,
        "versions": {"paramiko": paramiko.__version__, "openssh": openssh_version(),
                     "python": platform.python_version()},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")

    print(f"ssh round trip of `true`, n={args.n} each (after {args.warmup} warm-up), interleaved")
    print(f"  SSHConnection.run         p50 {mine['p50_ms']:8.3f} ms   p90 {mine['p90_ms']:8.3f} ms")
    print(f"  ssh + ControlMaster       p50 {ref['p50_ms']:8.3f} ms   p90 {ref['p90_ms']:8.3f} ms")
    print(f"  ratio (ours / OpenSSH)    p50 {ratio_p50:8.3f}      p90 {ratio_p90:8.3f}"
          f"      target p50 <= {TARGET_RATIO}: {'met' if result['meets_target'] else 'MISSED'}")
    print(f"  written to {args.output}")
    return 0 if result["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
