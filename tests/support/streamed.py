"""A long child command run from a test, its output shown as it comes (a
log line each, so `-o log_cli=true` shows progress live) and kept in a file;
the child is stopped by its process group when the test is torn down early
(a pytest-timeout, Ctrl-C), so nothing it started outlives the test."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path

log = logging.getLogger("xenhil.tests.streamed")

ROOT = Path(__file__).resolve().parents[2]


def streamed_run(argv: list[str], log_path: Path, name: str) -> tuple[int, str]:
    """``argv`` run from the checkout; its exit status and whole output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    lines: list[str] = []
    with open(log_path, "w", encoding="utf-8", errors="replace") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace",
                                bufsize=1, start_new_session=True)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                out.flush()
                lines.append(line)
                log.info("[%s] %s", name, line.rstrip("\n"))
            return proc.wait(), "".join(lines)
        finally:
            if proc.poll() is None:
                # The test is being torn down: its whole group goes (pytest's
                # own children, an xl console, ssh), first politely.
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
