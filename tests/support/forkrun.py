"""A fork server for the hostile-input corpus (tests/test_hostile_input.py).

Starting ``xenhil`` or ``pytest`` afresh costs about half a second of
imports; 250 cases would cost minutes.  This server is one clean,
single-threaded process that imports the harness once and then forks one
child per case: the child is a subprocess like any other, with its own
working directory, environment, stdin from /dev/null, stdout and stderr
into files, ``RLIMIT_AS`` (memory) set, and a time limit enforced by the
server (SIGKILL).  The server reports the child's exit code, wall and CPU
time and peak RSS (wait4), one JSON line per case.

Protocol: one JSON object per line on stdin: {"runner": "cli"|"pytest",
"argv": [...], "cwd": DIR, "env": {...}, "out": DIR, "timeout": s,
"memory": bytes}; one JSON line back on stdout.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time


def _child(case: dict) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (case["memory"], case["memory"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.chdir(case["cwd"])
    os.environ.clear()
    os.environ.update(case["env"])
    sys.dont_write_bytecode = True
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        out = os.open(os.path.join(case["out"], name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(out, fd)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    rc = 70
    try:
        if case["runner"] == "pytest":
            import pytest
            rc = int(pytest.main(list(case["argv"])))
        else:
            from xenhil.harness.cli.main import main
            rc = int(main(list(case["argv"])))
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except BaseException:
        import traceback
        traceback.print_exc()
        rc = 71
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


def _run(case: dict) -> dict:
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            _child(case)
        finally:
            os._exit(72)
    deadline = started + case["timeout"]
    timed_out = False
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            timed_out = True
            os.kill(pid, signal.SIGKILL)
            done, status, usage = os.wait4(pid, 0)
            break
        time.sleep(0.005)
    seconds = time.monotonic() - started
    rc = os.waitstatus_to_exitcode(status)
    return {"rc": rc, "seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "maxrss_kib": usage.ru_maxrss, "timed_out": timed_out}


def main() -> None:
    # Imported once here, so each child starts with them loaded.
    import xenhil.harness.cli.main  # noqa: F401
    import xenhil.harness.lab.inventory  # noqa: F401
    import xenhil.harness.xen.savefile  # noqa: F401
    import pytest  # noqa: F401
    for module in ("reserve", "lab_check", "lab_status", "report", "savefile", "split", "host", "power"):
        __import__(f"xenhil.harness.cli.{module}")
    xenhil.harness.cli.main.build_parser()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        print(json.dumps(_run(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
