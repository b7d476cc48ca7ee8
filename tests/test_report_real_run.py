"""The HTML report of a real run on the virtual lab, as a reviewer opens it.

The Allure results under tests/data/recorded/allure-virtual-lab/ are what
`pytest suites --lab lab/virtual.yaml --alluredir ...` wrote on the virtual
lab (real Xen 4.17, real guests, the probe ioreq server; see the README in
that folder).  They are rendered with the Allure command line, served on
127.0.0.1 and opened in headless Chromium: the categories page lists the
failure classes, a failed test shows its evidence attachments, and the
latency plot image loads and is drawn.  Screenshots go to
artifacts/report-screenshots/real-run-*.png.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

import xenhil.harness.results.plots  # noqa: F401  (numpy before any pytester run, see test_report_render)
from xenhil.harness.errors import ConfigError
from xenhil.harness.report import PROJECT_ROOT, render_html
from xenhil.harness.results.categories import write_categories
from tests.support.browser import HeadlessChromium, ReportServer, chromium  # noqa: F401

RECORDED = Path(__file__).parent / "data" / "recorded" / "allure-virtual-lab"
SCREENSHOTS = PROJECT_ROOT / "artifacts" / "report-screenshots"
CLASS_CATEGORY = {"infrastructure": "Infrastructure", "product": "Product", "test-bug": "Test bug"}


def _walk(node: dict, parents: tuple = ()):
    for child in node.get("children", []):
        yield child, parents
        yield from _walk(child, parents + (child,))


def _results(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in folder.glob("*-result.json")]


def _label(result: dict, name: str) -> str | None:
    return next((l["value"] for l in result["labels"] if l["name"] == name), None)


def _drawn_pixels(png: Path) -> int:
    """Pixels in matplotlib's first line colour (#1f77b4): many only where
    the latency plot is drawn."""
    rgb = (matplotlib.image.imread(str(png))[..., :3] * 255).astype(int)
    return int((np.abs(rgb - np.array((31, 119, 180))).sum(axis=-1) < 60).sum())


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, list[dict]]:
    results = tmp_path_factory.mktemp("real") / "allure-results"
    shutil.copytree(RECORDED, results)
    # The run wrote categories.json at its end; write it again so that the
    # test checks the categories this code produces, not a recorded copy.
    write_categories(results)
    html = render_html(results, results.parent / "html", name="xenhil real run").parent
    return html, _results(results)


def test_recorded_run_is_real_and_has_what_the_checks_need():
    results = _results(RECORDED)
    hosts = {_label(r, "host") for r in results}
    assert hosts == {"vhost1"}, hosts  # the lab host, not the runner's hostname
    assert any(r["status"] in ("failed", "broken") for r in results)
    assert any(a["name"] == "latency.png" for r in results for a in r.get("attachments", []))


def test_each_failure_sits_in_its_class_category(report):
    html, results = report
    categories = json.loads((html / "data" / "categories.json").read_text())
    by_uid = {}
    for node, parents in _walk(categories):
        if "status" in node:
            by_uid.setdefault(node["name"], set()).add(parents[0]["name"].split(":")[0])
    failed = [r for r in results if r["status"] in ("failed", "broken")]
    assert failed
    for r in failed:
        cls = _label(r, "failure_class")
        assert cls in CLASS_CATEGORY, (r["name"], cls)
        assert by_uid.get(r["name"]) == {CLASS_CATEGORY[cls]}, (r["name"], by_uid.get(r["name"]))


def test_reviewer_sees_classes_evidence_and_the_latency_plot(
        report, chromium: HeadlessChromium) -> None:  # noqa: F811
    html, results = report
    categories = json.loads((html / "data" / "categories.json").read_text())
    cases = {c["uid"]: c for c in (json.loads(p.read_text())
                                   for p in (html / "data" / "test-cases").glob("*.json"))}
    leaves = [(node, parents) for node, parents in _walk(categories) if "status" in node]
    # The failed test with the most evidence attached.
    leaf, _ = max(leaves, key=lambda lp: len(cases[lp[0]["uid"]]["testStage"].get("attachments", [])))
    case = cases[leaf["uid"]]
    attachments = case["testStage"]["attachments"]
    evidence = [a for a in attachments if a["name"] not in ("log", "stdout", "stderr")]
    assert evidence, f"{case['name']}: no evidence attached"
    # The latency plot of the run.
    latency_case = next(c for c in cases.values()
                        if any(a["name"] == "latency.png" for a in c["testStage"].get("attachments", [])))
    plot = next(a for a in latency_case["testStage"]["attachments"] if a["name"] == "latency.png")
    plot_file = html / "data" / "attachments" / plot["source"]
    assert plot_file.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with ReportServer(html) as server:
        dom = chromium.dump_dom(server.url("index.html#categories"))
        for node in categories["children"]:           # each category with failures
            assert node["name"] in dom, node["name"]
        test_page = f"index.html#categories/{leaf['parentUid']}/{leaf['uid']}"
        dom = chromium.dump_dom(server.url(test_page))
        message = case.get("statusMessage", "").splitlines()[0]
        assert message[:60] in dom
        for attachment in evidence:
            assert f'data-uid="{attachment["uid"]}"' in dom, attachment["name"]
            assert f">{attachment['name']}</div>" in dom, attachment["name"]
        chromium.screenshot(server.url("index.html#categories"), SCREENSHOTS / "real-run-categories.png")
        page = chromium.screenshot(server.url(test_page), SCREENSHOTS / "real-run-failed-test.png")

        # The latency test's plot, opened from the test's page in the suites tree.
        suites = json.loads((html / "data" / "suites.json").read_text())
        latency_leaf = next(node for node, _ in _walk(suites) if node.get("uid") == latency_case["uid"])
        plot_page = (f"index.html#suites/{latency_leaf['parentUid']}/{latency_case['uid']}"
                     f"?attachment={plot['uid']}")
        before = len(server.requests)
        dom = chromium.dump_dom(server.url(plot_page))
        assert f'src="data/attachments/{plot_file.name}' in dom
        assert (f"/data/attachments/{plot_file.name}", 200) in server.requests[before:]
        shown = chromium.screenshot(server.url(plot_page), SCREENSHOTS / "real-run-latency-plot.png")
    assert _drawn_pixels(shown) > _drawn_pixels(page) + 300, "the latency plot was not drawn"


def _case_names(html: Path) -> set[str]:
    return {json.loads(p.read_text())["name"] for p in (html / "data" / "test-cases").glob("*.json")}


def test_a_report_folder_used_again_shows_the_newer_run(tmp_path: Path):
    # The main job renders every run into allure-report/.  Allure 3 writes a
    # second report into allure2/ of a folder holding one, and the page at
    # allure-report/index.html went on showing the first run.
    first, second = tmp_path / "first", tmp_path / "second"
    shutil.copytree(RECORDED, first)
    shutil.copytree(RECORDED, second)
    for path in second.glob("*-result.json"):       # the second run: its passed tests only
        if json.loads(path.read_text())["status"] != "passed":
            path.unlink()
    names_first, names_second = ({r["name"] for r in _results(f)} for f in (first, second))
    assert names_second < names_first                 # the recorded run has failures
    html = tmp_path / "allure-report"
    render_html(first, html)
    assert _case_names(html) == names_first
    index = render_html(second, html)
    assert index == html / "index.html"
    assert _case_names(html) == names_second
    assert not (html / "allure2").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["allure-report", "first", "second"]


def test_a_folder_holding_something_else_is_refused_untouched(tmp_path: Path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "todo.txt").write_text("mine\n")
    with pytest.raises(ConfigError, match=r"-o/--output .*notes: holds files but no report"):
        render_html(RECORDED, out)
    assert [p.name for p in out.iterdir()] == ["todo.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["notes"]
