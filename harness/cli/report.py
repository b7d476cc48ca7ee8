"""``xenhil report RESULTS_DIR -o HTML_DIR``: the HTML report and the triage summary."""
from __future__ import annotations

import argparse
from pathlib import Path

from harness.errors import ConfigError


def _report(args: argparse.Namespace) -> int:
    from harness.report import render_html, run_id_of, triage_summary
    from harness.results.store import ResultsStore
    from harness.results.verdicts import load_known_issues

    results = Path(args.results_dir)
    index = render_html(results, Path(args.output))
    print(f"HTML report: {index}")
    run_id = args.run or run_id_of(results)
    if run_id is None:
        raise ConfigError(f"{results}: no xenhil.run_id in environment.properties",
                          help="pass --run RUN_ID")
    db = args.results_db or f"sqlite://{Path(args.artifacts).resolve() / 'results.sqlite'}"
    store = ResultsStore(db)
    try:
        summary = triage_summary(store, run_id, load_known_issues(
            Path(args.known_issues) if args.known_issues else None))
    finally:
        store.close()
    print(summary)
    (Path(args.output) / "triage.txt").write_text(summary)
    if args.scan_secrets:
        return _scan_secrets(Path(args.scan_secrets), [results, Path(args.output)] + [
            Path(p) for p in args.scan_also])
    return 0


def _scan_secrets(inventory_path: Path, folders: list[Path]) -> int:
    from harness.lab.inventory import load_inventory
    from harness.results.secret_scan import inventory_secrets, scan

    secrets = inventory_secrets(load_inventory(inventory_path))
    leaks = scan(folders, secrets)
    shown = ", ".join(str(f) for f in folders)
    if leaks:
        for leak in leaks:
            print(f"SECRET LEAK: {leak.path} holds the {leak.what}")
        print(f"secret scan: {len(leaks)} leak(s) of {inventory_path}'s secrets under {shown}")
        return 1
    print(f"secret scan: none of {inventory_path}'s {len(secrets)} secret value(s) "
          f"appears under {shown}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="render Allure results to HTML and print the triage summary")
    report.add_argument("results_dir", help="the --alluredir of the run")
    report.add_argument("-o", "--output", required=True, help="HTML output folder")
    report.add_argument("--results-db", default=None,
                        help="results store (default sqlite:///ARTIFACTS/results.sqlite)")
    report.add_argument("--artifacts", default="artifacts", help="the run's --artifacts folder")
    report.add_argument("--run", default=None, help="run id (default: from the results)")
    report.add_argument("--known-issues", default="known-issues.yaml" if Path("known-issues.yaml").exists() else None,
                        help="YAML list of {test, reason, link}: expected failures")
    report.add_argument("--scan-secrets", metavar="INVENTORY", default=None,
                        help="fail (exit 1) if a secret this inventory references appears in "
                             "the results or the report")
    report.add_argument("--scan-also", action="append", default=[], metavar="DIR",
                        help="another folder to scan (e.g. the run's artifacts)")
    report.set_defaults(func=_report)
