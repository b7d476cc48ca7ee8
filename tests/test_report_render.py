"""The HTML report as a reviewer sees it: a real pytest run with a failure of
each class and real evidence (a console slice from a TCP console, an xl
config, a latency table and its plot), rendered by the Allure command line,
served on 127.0.0.1 and opened in headless Chromium.

Screenshots are kept in artifacts/report-screenshots/ of the project for a
human to look at.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

# numpy is imported here, before pytester: an in-process pytester run drops
# the modules it imported, and numpy cannot be loaded twice in one process.
import xenhil.harness.results.plots  # noqa: F401
from xenhil.harness.attach import (
    attach_file,
    attach_latency,
    attach_text,
    set_test_artifact_dir,
    test_artifact_dir,
)
from xenhil.harness.errors import TestBugError
from xenhil.harness.secrets import register_secret
from xenhil.harness.report import PROJECT_ROOT, render_html
from tests.support.browser import HeadlessChromium, ReportServer, chromium  # noqa: F401

pytest_plugins = ["pytester"]

SCREENSHOTS = PROJECT_ROOT / "artifacts" / "report-screenshots"

RUN = """
    import random

    from xenhil.harness.access.console import Console
    from xenhil.harness.attach import attach_console_slice, attach_file, attach_latency
    from xenhil.harness.errors import ConfigError, InfrastructureError, ProductError
    from xenhil.harness.results.latency import summarize
    from xenhil.harness.results.plots import latency_distribution_png
    from tests.support.console_server import ConsoleServer, scripted

    BOOT = (b"(XEN) Xen version 4.20.0 (root@lab) (gcc 12.2.0)\\r\\n"
            b"(XEN) HVM d1: ioreq server 1 (qnet) created\\r\\n"
            b"(XEN) HVM d1: ioreq server 2 (qall) created\\r\\n"
            b"Debian GNU/Linux 12 guest ttyS0\\r\\n\\r\\nguest login: ")

    def test_console_lost():
        raise InfrastructureError("console of vh1 closed while Xen was booting")

    def test_bad_split():
        raise ConfigError("split 'qnet+' in fixtures/splits.yaml names an empty model")

    def test_routing_wrong(tmp_path):
        server = ConsoleServer(scripted(BOOT))
        try:
            console = Console.tcp("vh1", "127.0.0.1", server.port, tmp_path / "vh1.console.log")
            with console:
                begin = console.mark("boot")
                console.expect(r"login: ", timeout=30)
                attach_console_slice(console, begin, "vh1 console during guest boot")
        finally:
            server.stop()
        cfg = tmp_path / "g1.cfg"
        cfg.write_text('name = "g1"\\ntype = "hvm"\\nmemory = 256\\n'
                       'vif = [ "id=nic1,bridge=xenbr0" ]\\n'
                       'device_models = [ "name=qnet,vifs=nic1", "name=qall,ui,ide" ]\\n')
        attach_file(cfg, "xl config g1.cfg", "text/plain")
        rng = random.Random(4)
        samples = {"xen (PIT)": [rng.lognormvariate(6.0, 0.2) for _ in range(400)],
                   "qnet": [rng.lognormvariate(9.6, 0.3) for _ in range(400)],
                   "qall": [rng.lognormvariate(9.9, 0.3) for _ in range(400)]}
        png = latency_distribution_png(samples, tmp_path / "latency.png", "split=qnet+qall on vh1")
        rows = [{"server": name, **summarize(values)} for name, values in samples.items()]
        attach_latency(rows, png)
        raise ProductError("port 0xc000 was served by qall, expected qnet (owner of nic1)")

    def test_passes():
        pass
"""


def _walk(node: dict, parents: tuple = ()):
    for child in node.get("children", []):
        yield child, parents
        yield from _walk(child, parents + (child,))


def _c0_c1_pixels(png: Path) -> tuple[int, int]:
    """Pixels in matplotlib's first two line colours (#1f77b4 blue, #ff7f0e
    orange): there are many only where the latency plot is drawn."""
    rgb = (matplotlib.image.imread(str(png))[..., :3] * 255).astype(int)

    def near(color):
        return int((np.abs(rgb - np.array(color)).sum(axis=-1) < 60).sum())

    return near((31, 119, 180)), near((255, 127, 14))


def test_report_shows_classes_attachments_and_latency_plot(
        pytester: pytest.Pytester, tmp_path: Path, chromium: HeadlessChromium) -> None:  # noqa: F811
    alluredir, artifacts, html = tmp_path / "allure", tmp_path / "artifacts", tmp_path / "html"
    pytester.syspathinsert(PROJECT_ROOT)  # the inner run uses tests.support.console_server
    pytester.makepyfile(test_report=RUN)
    result = pytester.runpytest(f"--alluredir={alluredir}", f"--artifacts={artifacts}",
                                "--run-id=render")
    result.assert_outcomes(passed=1, failed=3)

    # Evidence is also kept next to the run, whether or not Allure collects.
    copies = artifacts / "render" / "tests" / "test_report.py--test_routing_wrong"
    assert sorted(p.name for p in copies.iterdir()) == [
        "latency.csv", "latency.png", "vh1-console-during-guest-boot.txt", "xl-config-g1.cfg.txt"]
    assert "guest login:" in (copies / "vh1-console-during-guest-boot.txt").read_text()

    index = render_html(alluredir, html, name="xenhil render test")
    assert "googletagmanager" not in index.read_text()  # no third-party calls from a lab report

    # The report's own data: each failure in its class's category.
    categories = json.loads((html / "data" / "categories.json").read_text())
    by_category = {}
    for node, parents in _walk(categories):
        if "status" in node:  # a test result leaf
            by_category.setdefault(parents[0]["name"].split(":")[0], []).append(node["name"])
    assert by_category == {"Infrastructure": ["test_console_lost"], "Product": ["test_routing_wrong"],
                           "Test bug": ["test_bad_split"]}
    leaf = next(node for node, _ in _walk(categories) if node.get("name") == "test_routing_wrong")
    cases = [json.loads(p.read_text()) for p in (html / "data" / "test-cases").glob("*.json")]
    case = next(c for c in cases if c["name"] == "test_routing_wrong")
    assert case["uid"] == leaf["uid"]
    attachments = {a["name"]: a for a in case["testStage"]["attachments"]}
    assert set(attachments) == {"vh1 console during guest boot", "xl config g1.cfg",
                                "latency.csv", "latency.png"}
    plot = html / "data" / "attachments" / attachments["latency.png"]["source"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", plot.read_bytes()[16:24]) == (800, 450)
    table = (html / "data" / "attachments" / attachments["latency.csv"]["source"]).read_text()
    assert table.splitlines()[0] == "server,n,p50_ns,p90_ns,p99_ns,max_ns"
    assert [line.split(",")[0] for line in table.splitlines()[1:]] == ["xen (PIT)", "qnet", "qall"]

    # The allure2 UI routes a test as #<tab>/<parent group uid>/<test uid>,
    # and opens an attachment with ?attachment=<attachment uid>.
    test_page = f"index.html#categories/{leaf['parentUid']}/{leaf['uid']}"
    plot_page = f"{test_page}?attachment={attachments['latency.png']['uid']}"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with ReportServer(html) as server:
        dom = chromium.dump_dom(server.url("index.html#categories"))
        for name in ("Infrastructure: the lab failed, not the patch (rerun)",
                     "Product: Xen/QEMU behaved wrongly (blame the patch)",
                     "Test bug: the framework, a suite or its input is wrong"):
            assert name in dom

        dom = chromium.dump_dom(server.url(test_page))
        assert "[product] port 0xc000 was served by qall, expected qnet" in dom
        for name, attachment in attachments.items():
            assert f'data-uid="{attachment["uid"]}"' in dom, name
            assert f">{name}</div>" in dom, name
            assert f'data-download="data/attachments/{attachment["source"]}"' in dom, name

        before = len(server.requests)
        dom = chromium.dump_dom(server.url(plot_page))
        assert f'<img class="attachment-preview__media" src="data/attachments/{plot.name}' in dom
        assert (f"/data/attachments/{plot.name}", 200) in server.requests[before:]

        # A text attachment is fetched and shown when opened.
        console_page = f"{test_page}?attachment={attachments['vh1 console during guest boot']['uid']}"
        dom = chromium.dump_dom(server.url(console_page))
        assert "(XEN) HVM d1: ioreq server 2 (qall) created" in dom

        chromium.screenshot(server.url("index.html#categories"), SCREENSHOTS / "categories.png")
        chromium.screenshot(server.url(console_page), SCREENSHOTS / "console-slice.png")
        page = chromium.screenshot(server.url(test_page), SCREENSHOTS / "failed-test.png")
        shown = chromium.screenshot(server.url(plot_page), SCREENSHOTS / "latency-plot.png")
    # The browser really decoded and drew the plot: its line colours cover
    # the screen only once the attachment is open.
    blue_page, orange_page = _c0_c1_pixels(page)
    blue_plot, orange_plot = _c0_c1_pixels(shown)
    assert blue_plot > blue_page + 300 and orange_plot > orange_page + 300, (
        (blue_page, orange_page), (blue_plot, orange_plot))


def test_attach_without_allure_keeps_scrubbed_copies(tmp_path: Path) -> None:
    register_secret("render-test-secret-1")
    folder = test_artifact_dir(tmp_path / "run1", "suites/pci/test_bars.py::test_bar[split=qnet+qall]")
    assert folder == tmp_path / "run1" / "tests" / "suites.pci.test_bars.py--test_bar[split=qnet+qall]"
    set_test_artifact_dir(folder)
    try:
        first = attach_text("password render-test-secret-1 refused", "bmc log")
        second = attach_text("again", "bmc log")
        data = tmp_path / "facts.json"
        data.write_text('{"password": "render-test-secret-1"}')
        as_json = attach_file(data, "facts")
    finally:
        set_test_artifact_dir(None)
    assert first.read_text() == "password *** refused"
    assert second.name == "bmc-log-2.txt"  # earlier evidence is never overwritten
    assert as_json.name == "facts.json" and json.loads(as_json.read_text()) == {"password": "***"}
    # Outside a test, with no folder given, nothing is written anywhere.
    assert attach_text("x", "orphan") is None


def test_binary_attachment_holding_a_secret_is_withheld(tmp_path: Path) -> None:
    register_secret("render-test-secret-2")
    blob = tmp_path / "dump.png"
    blob.write_bytes(b"\x89PNG\r\n\x1a\n" + b"render-test-secret-2" + bytes(range(256)))
    copy = attach_file(blob, "dump", "image/png", artifact_dir=tmp_path / "out")
    assert copy.suffix == ".txt" and "withheld" in copy.read_text()
    assert b"render-test-secret-2" not in copy.read_bytes()


def test_unknown_attachment_kind_names_the_supported_ones(tmp_path: Path) -> None:
    with pytest.raises(TestBugError, match=r"kind 'video/mp4'.*\n.*text/plain, image/png, text/csv"):
        attach_file(tmp_path / "x.mp4", "video", "video/mp4", artifact_dir=tmp_path)
    with pytest.raises(TestBugError, match="not a text kind"):
        attach_text("x", "picture", kind="image/png", artifact_dir=tmp_path)
    assert attach_latency([["server", "p50_ns"], ["qnet", 1]], None, artifact_dir=tmp_path)[0] \
        .read_text() == "server,p50_ns\nqnet,1\n"
