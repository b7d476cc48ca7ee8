"""``xenhil report RESULTS_DIR -o HTML_DIR``: the HTML report and the triage summary.

Every input is checked before anything is written (results folder, output
folder, results store, known issues, run id, and for ``--scan-secrets`` the
inventory, each of its secrets and every folder to scan): bad input is one
line and exit 2, with nothing written.

``--scan-secrets INVENTORY`` then proves that none of that lab's secrets,
in any form (harness.results.secret_scan), reached the results, the report,
the results store, the lab's SQLite lease store or the ``--scan-also``
folders and files: exit 1 on a
leak, 2 when it cannot check (a secret not resolvable here, a folder that
does not exist).  The inventory's secrets are registered first, so the
triage text is masked like every other output.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable
from pathlib import Path

from xenhil.harness.errors import ConfigError


def _inputs(args: argparse.Namespace) -> dict:
    """Every input checked, nothing written yet."""
    from xenhil.harness.dburl import is_postgres, sqlite_path
    from xenhil.harness.options import check_input_path, check_output_folder, check_store_url
    from xenhil.harness.report import check_report_folder, run_id_of, run_state_of
    from xenhil.harness.results.verdicts import load_known_issues

    results = check_input_path("RESULTS_DIR", args.results_dir, folder=True)
    if not any(results.glob("*-result.json")):
        raise ConfigError(f"RESULTS_DIR {results}: no Allure results here",
                          help="run pytest with --alluredir=DIR first and pass that DIR")
    output = check_output_folder("-o/--output", args.output)
    check_report_folder(output)
    # The report's files would become results Allure reads next time, or
    # generating the report into a folder could replace the results in it.
    out, res = output.resolve(), results.resolve()
    where = ("is RESULTS_DIR" if out == res else "is inside RESULTS_DIR" if res in out.parents
             else "holds RESULTS_DIR" if out in res.parents else None)
    if where:
        raise ConfigError(f"-o/--output {output}: {where} {results}",
                          help="give the report a folder of its own, e.g. -o allure-report")
    db = args.results_db or f"sqlite://{Path(args.artifacts).resolve() / 'results.sqlite'}"
    check_store_url("--results-db", db, postgres=True)
    # A SQLite store is a file this command checks and scans; a PostgreSQL
    # one is checked when it is opened, and scanned through its rows.
    db_path = None if is_postgres(db) else sqlite_path(db, "results store")
    if db_path is not None and not db_path.is_file():
        raise ConfigError(f"--results-db: results store {db_path} does not exist",
                          help="pass the run's --artifacts folder (its results.sqlite) or --results-db")
    history = _history_file(args.history) if args.history else None
    known = load_known_issues(Path(args.known_issues) if args.known_issues else None)
    run_id = args.run or run_id_of(results)
    if run_id is None:
        raise ConfigError(f"RESULTS_DIR {results}: no xenhil.run_id in environment.properties",
                          help="pass --run RUN_ID")
    scan = None
    if args.scan_secrets:
        from xenhil.harness.lab.inventory import load_inventory
        from xenhil.harness.results.secret_scan import inventory_secrets
        inventory_path = check_input_path("--scan-secrets", args.scan_secrets, folder=False)
        also = [check_input_path("--scan-also", p) for p in args.scan_also]
        lab = load_inventory(inventory_path)
        # Registered for masking too; a PostgreSQL results store's password with them.
        secrets = inventory_secrets(lab, (db,))
        store_files = [db_path, *_store_companions(db_path)] if db_path is not None else []
        targets = [results, output, *store_files, *_lease_store_files(lab), *also]
        scan = (inventory_path, secrets, targets, _stores_scanned_by_rows(db, lab))
    return {"results": results, "output": output, "db": db, "known": known, "run_id": run_id,
            "history": history,
            "run_state": run_state_of(results) if run_id == run_id_of(results) else None,
            "scan": scan}


def _history_file(value: str) -> Path:
    """--history: Allure's history file, created when missing (then its
    folder must be writable), else a regular file Allure appends to."""
    from xenhil.harness.options import check_input_path, check_output_folder
    path = Path(value)
    if path.exists() or path.is_symlink():
        return check_input_path("--history", path, folder=False)
    check_output_folder("--history", path.parent)
    return path


def _lease_store_files(inventory) -> list[Path]:
    """The lab's SQLite lease store and its log, when they exist: the run
    wrote into it too (holders, quarantine reasons, guests' failures, events),
    and `xenhil lab status` shows it to everyone.  A PostgreSQL lease store
    is scanned through its rows (_stores_scanned_by_rows)."""
    from xenhil.harness.dburl import is_postgres, sqlite_path
    from xenhil.harness.lab.leases import resolve_store_url
    url = resolve_store_url(None, inventory)
    if is_postgres(url):
        return []
    path = sqlite_path(url, "lease store")
    return [path, *_store_companions(path)] if path.is_file() else []


def _store_companions(db_path: Path) -> list[Path]:
    """The store's write-ahead log, which holds its newest rows until a checkpoint."""
    wal = db_path.with_name(db_path.name + "-wal")
    return [wal] if wal.is_file() else []


def _report(args: argparse.Namespace) -> int:
    from xenhil.harness.report import render_html, triage_summary
    from xenhil.harness.results.store import ResultsStore
    from xenhil.harness.secrets import scrub

    inputs = _inputs(args)
    store = ResultsStore(inputs["db"], create=False)
    try:
        summary = scrub(triage_summary(store, inputs["run_id"], inputs["known"],
                                       run_state=inputs["run_state"]))
    except KeyError:
        raise ConfigError(f"--run {inputs['run_id']}: not in the results store {store.url}",
                          help="pass the run id the results carry, or the right --results-db") from None
    finally:
        store.close()
    index = render_html(inputs["results"], inputs["output"], name=args.title,
                        history=inputs["history"])
    print(f"HTML report: {index}")
    print(summary)
    (inputs["output"] / "triage.txt").write_text(summary)
    if inputs["scan"]:
        return _scan_secrets(*inputs["scan"])
    return 0


def _stores_scanned_by_rows(results_db: str, inventory) -> list[tuple[str, Callable[[], Any]]]:
    """The stores that are not files (PostgreSQL: the results store, the
    lab's lease store), as (what, opener): each is scanned through a copy of
    its text values."""
    from xenhil.harness.dburl import is_postgres
    from xenhil.harness.lab.leases import open_store, resolve_store_url
    from xenhil.harness.results.store import ResultsStore

    stores: list[tuple[str, Callable[[], Any]]] = []
    if is_postgres(results_db):
        stores.append((f"the results store {results_db}",
                       lambda: ResultsStore(results_db, create=False)))
    lease_url = resolve_store_url(None, inventory)
    if is_postgres(lease_url):
        stores.append((f"the lease store {lease_url}", lambda: open_store(lease_url)))
    return stores


def _scan_secrets(inventory_path: Path, secrets: dict[str, str], targets: list[Path],
                  row_stores: list[tuple[str, Callable[[], Any]]]) -> int:
    """``row_stores``: stores that are not files, each scanned through a
    copy of its text values that lives only as long as the scan."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="xenhil-store-scan-") as folder:
        names: dict[Path, str] = {}
        for index, (what, opener) in enumerate(row_stores):
            copy = Path(folder) / f"store-{index}.txt"
            store = opener()
            try:
                with open(copy, "w", encoding="utf-8", errors="surrogateescape") as out:
                    for value in store.text_values():
                        out.write(value + "\n")
            finally:
                store.close()
            names[copy] = what
        return _scan_targets(inventory_path, secrets, targets + list(names), names)


def _scan_targets(inventory_path: Path, secrets: dict[str, str], targets: list[Path],
                  names: dict[Path, str]) -> int:
    from xenhil.harness.results.secret_scan import scan, scanned_files
    from xenhil.harness.secrets import scrub

    leaks = scan(targets, secrets)
    shown = ", ".join(names.get(f, str(f)) for f in targets)
    if leaks:
        for leak in leaks:
            # Masked: a leak in a file's name would be printed by naming the file.
            # (The scan's secrets were registered when they were resolved.)
            print(scrub(f"SECRET LEAK: {names.get(leak.path, leak.path)} holds the {leak.what}"))
        print(f"secret scan: {len(leaks)} leak(s) of {inventory_path}'s secrets under {shown}")
        return 1
    print(f"secret scan: none of {inventory_path}'s {len(secrets)} secret value(s), in any "
          f"form, appears in the {scanned_files(targets)} files under {shown}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="render Allure results to HTML and print the triage summary")
    report.add_argument("results_dir", help="the --alluredir of the run")
    report.add_argument("-o", "--output", required=True, help="HTML output folder")
    report.add_argument("--results-db", default=None,
                        help="results store: sqlite:///PATH or postgresql://USER@HOST/DB "
                             "(default sqlite:///ARTIFACTS/results.sqlite)")
    report.add_argument("--artifacts", default="artifacts", help="the run's --artifacts folder")
    report.add_argument("--run", default=None, help="run id (default: from the results)")
    report.add_argument("--known-issues", default="known-issues.yaml" if Path("known-issues.yaml").exists() else None,
                        help="YAML list of {test, reason, link}: expected failures")
    report.add_argument("--history", metavar="FILE", default=None,
                        help="Allure's history file (JSON lines): earlier runs drawn in the trend "
                             "graphs, this run appended (created when missing)")
    report.add_argument("--title", default="xenhil", help="the report's name (default xenhil)")
    report.add_argument("--scan-secrets", metavar="INVENTORY", default=None,
                        help="fail (exit 1) if a secret this inventory references appears, in any "
                             "form, in the results, the report, the results store or --scan-also; "
                             "exit 2 if one cannot be checked")
    report.add_argument("--scan-also", action="append", default=[], metavar="PATH",
                        help="another folder or file to scan (e.g. the run's artifacts)")
    report.set_defaults(func=_report)
