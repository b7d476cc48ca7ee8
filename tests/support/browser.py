"""Look at a rendered HTML report the way a reviewer does: served over HTTP
on 127.0.0.1 (the Allure UI fetches data/*.json, which browsers refuse over
file://) and opened in headless Chromium (Debian package ``chromium``).

- :class:`ReportServer`: a threaded ``http.server`` for one folder on
  127.0.0.1 (a free port), recording every request path and status, so a test
  can tell which files the page really loaded (e.g. an attachment image).
- :class:`HeadlessChromium`: ``--dump-dom`` and ``--screenshot`` runs, each
  with a fresh profile, no network beyond 127.0.0.1 (every other host name
  resolves to nothing), killed by process group when it overruns.
"""
from __future__ import annotations

import functools
import http.server
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # keep test output clean
        pass

    def log_request(self, code="-", size="-") -> None:
        self.server.requests.append((urlsplit(self.path).path, int(code) if str(code).isdigit() else 0))


class ReportServer:
    """``with ReportServer(folder) as server: server.url("index.html")``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        handler = functools.partial(_Handler, directory=str(self.root))
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.requests = []
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def requests(self) -> list[tuple[str, int]]:
        """(path, status) of every request so far, in order."""
        return list(self._httpd.requests)

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def __enter__(self) -> "ReportServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


class HeadlessChromium:
    # Every host name but 127.0.0.1 resolves to nothing: a report that tries
    # to load a third-party script (analytics, fonts) cannot reach the internet.
    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]

    def __init__(self, binary: str, timeout: float = 120.0):
        self.binary, self.timeout = binary, timeout

    def _run(self, args: list[str]) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory(prefix="xenhil-chromium-") as profile:
            argv = [self.binary, *self.FLAGS, f"--user-data-dir={profile}", *args]
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True)
            try:
                out, err = proc.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
                raise AssertionError(f"chromium overran {self.timeout}s on {args[-1]}:\n"
                                     + err.decode(errors="replace")[-2000:]) from None
            finally:
                # Chromium's helper processes (zygote, renderer) share its group.
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def dump_dom(self, url: str, budget_ms: int = 15000) -> str:
        """The DOM after the page's scripts ran for ``budget_ms`` of virtual time."""
        result = self._run([f"--virtual-time-budget={budget_ms}", "--dump-dom", url])
        if result.returncode != 0:
            raise AssertionError(f"chromium --dump-dom {url} exited {result.returncode}:\n"
                                 + result.stderr.decode(errors="replace")[-2000:])
        return result.stdout.decode("utf-8", "replace")

    def screenshot(self, url: str, path: Path, size: tuple[int, int] = (1400, 900),
                   budget_ms: int = 15000) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        result = self._run([f"--virtual-time-budget={budget_ms}", f"--window-size={size[0]},{size[1]}",
                            "--hide-scrollbars", f"--screenshot={path.resolve()}", url])
        if result.returncode != 0 or not path.exists():
            raise AssertionError(f"chromium --screenshot {url} exited {result.returncode}:\n"
                                 + result.stderr.decode(errors="replace")[-2000:])
        return path


@pytest.fixture(scope="session")
def chromium() -> HeadlessChromium:
    binary = chromium_binary()
    if binary is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium; "
                    "scripts/setup installs it in CI)")
    return HeadlessChromium(binary)
