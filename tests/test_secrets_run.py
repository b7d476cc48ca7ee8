"""The end-to-end secrets run (issue 15): a run of the plugin whose tests
print, log, assert-fail with, attach and write to the artifacts every secret
a lab inventory references, in every form (as is, base64 also inside a longer
text, hex, URL- and JSON-escaped, a long prefix).  Then `xenhil report
--scan-secrets` over everything the run wrote (Allure results, the HTML
report, results.sqlite, the artifacts, the triage text) finds none, the
masked forms are where the secrets were, and one raw or encoded copy put
back into any kind of file of the run makes the scan fail naming that file.

The secrets: a BMC password ({env: NAME}), an SSH key passphrase
({file: PATH}) and the encrypted private key file itself (ssh-keygen).  No
lab host is touched: the tests read the secrets as a suite would get them.
"""
from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from xenhil.harness.secrets import MASK

PASSWORD_VAR = "XENHIL_RUN_SECRET_BMC_PASSWORD"
XENHIL = str(Path(sys.executable).with_name("xenhil"))

INVENTORY = """\
hosts:
  - name: bmc1
    address: 127.0.0.1
    ssh: none
    power: {{kind: ipmi, address: 127.0.0.1, user: ADMIN, password: {{env: {var}}}}}
  - name: key1
    address: 127.0.0.2
    ssh: {{key_file: {key}, host_key: "{host_key}", passphrase: {{file: {passphrase}}}}}
    power: {{kind: none}}
"""

# The inner run's tests.  SECRETS_* name where each secret is; the tests
# read them as the lab layer would (the env variable, the files).
LEAKY_TESTS = '''
import base64
import json
import logging
import os
import urllib.parse
from pathlib import Path

import allure
import pytest

from xenhil.harness.attach import attach_text, current_test_artifact_dir

log = logging.getLogger("suite.leaky")


def secrets():
    return {
        "bmc password": os.environ[os.environ["SECRETS_BMC_VAR"]],
        "passphrase": Path(os.environ["SECRETS_PASSPHRASE_FILE"]).read_text().strip(),
        "private key": Path(os.environ["SECRETS_KEY_FILE"]).read_text(),
    }


def forms(value):
    raw = value.encode()
    return {
        "as-is": value,
        "base64": base64.b64encode(raw).decode(),
        "base64 in a header": "Authorization: Basic " + base64.b64encode(b"ADMIN:" + raw).decode(),
        "urlsafe base64": base64.urlsafe_b64encode(raw).decode(),
        "hex": raw.hex(),
        "HEX": raw.hex().upper(),
        "URL-escaped": urllib.parse.quote(value, safe=""),
        "URL query": "https://bmc/login?" + urllib.parse.urlencode({"pw": value}),
        "JSON-escaped": json.dumps({"password": value}),
        "repr": repr(value),
        "long prefix": value[: len(value) * 3 // 4],
    }


def every_form():
    return "\\n".join(f"{name} {form}: {text}" for name, value in secrets().items()
                      for form, text in forms(value).items())


def lines_of(value):
    return [line for line in value.splitlines() if len(line.strip()) >= 16 and "-----" not in line]


@pytest.mark.parametrize("which", ["bmc password", "passphrase", "private key"])
def test_prints_logs_attaches_writes_and_fails_with(which):
    value = secrets()[which]
    text = every_form()
    print("stdout:", text)
    print("stderr:", text, file=__import__("sys").stderr)
    log.warning("log record:\\n%s", text)
    attach_text(text, "harness attachment")
    allure.attach(text, name="raw allure attachment", attachment_type=allure.attachment_type.TEXT)
    # Written past the scrubber, as a tool's own log would be.
    folder = current_test_artifact_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tool.log").write_text("tool log:\\n" + text + "\\n")
    shown = {form: text for form, text in forms(value).items()}
    for line in lines_of(value):                    # one line of the key, as a log tail shows it
        shown["one line"] = line
    first = " | ".join(f"{form}={text}" for form, text in shown.items())
    assert value == "the right one", f"login refused {which}: {first}"


def test_a_secret_in_a_skip_reason():
    pytest.skip("no BMC answered to " + forms(secrets()["bmc password"])["hex"])


def test_passes_with_secrets_in_its_output():
    print(every_form())


@pytest.mark.parametrize("password", [os.environ[os.environ["SECRETS_BMC_VAR"]]])
def test_parametrized_with_the_password(password):
    # Its id would hold the password: pytest's lines, the artifacts folder
    # and the results store's key all come from it.
    attach_text("logged in", "login")
'''


@pytest.fixture(scope="module")
def lab_secrets(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen (openssh-client) is not installed")
    root = tmp_path_factory.mktemp("secrets-lab")
    # Characters every escaping changes: quotes, slash, ampersand, space,
    # backslash, a non-ASCII letter.
    password = "bmc/" + secrets.token_urlsafe(10) + " & \"q\" 'é\\"
    passphrase = "pass phrase+" + secrets.token_hex(8) + "=/?"
    passphrase_file = root / "passphrase"
    passphrase_file.write_text(passphrase + "\n")
    passphrase_file.chmod(0o600)
    key = root / "lab_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", "xenhil-test",
                    "-f", str(key)], check=True, timeout=60)
    host_key = " ".join(key.with_suffix(".pub").read_text().split()[:2])
    inventory = root / "lab.yaml"
    inventory.write_text(INVENTORY.format(var=PASSWORD_VAR, key=key, host_key=host_key,
                                          passphrase=passphrase_file))
    return {"password": password, "passphrase": passphrase, "key": key.read_text(),
            "key_file": key, "passphrase_file": passphrase_file, "inventory": inventory}


def _env(lab: dict) -> dict:
    env = dict(os.environ)
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTEST_XDIST_TESTRUNUID", None)
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_CURRENT_TEST", None)
    env[PASSWORD_VAR] = lab["password"]
    env["SECRETS_BMC_VAR"] = PASSWORD_VAR
    env["SECRETS_PASSPHRASE_FILE"] = str(lab["passphrase_file"])
    env["SECRETS_KEY_FILE"] = str(lab["key_file"])
    return env


def _encoded(value: str) -> dict[str, str]:
    raw = value.encode()
    return {"as-is": value, "base64": base64.b64encode(b"x:" + raw).decode(), "hex": raw.hex(),
            "URL-escaped": urllib.parse.quote(value, safe=""), "JSON-escaped": json.dumps(value),
            "prefix": value[: len(value) * 3 // 4]}


@pytest.mark.parametrize("workers", [0, 2], ids=["n0", "n2"])
def test_a_run_printing_every_secret_leaves_none_and_a_planted_copy_is_found(
        lab_secrets: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    lab = lab_secrets
    env = _env(lab)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "test_leaky.py").write_text(LEAKY_TESTS)
    alluredir, artifacts = tmp_path / "allure-results", tmp_path / "artifacts"
    db = artifacts / "results.sqlite"
    log_file = artifacts / "pytest.log"
    args = [sys.executable, "-m", "pytest", "test_leaky.py", "-p", "no:cacheprovider",
            f"--lab={lab['inventory']}", f"--alluredir={alluredir}", f"--artifacts={artifacts}",
            f"--results-db=sqlite://{db}", "--run-id=secrets-run", f"--log-file={log_file}",
            "--log-file-level=DEBUG", "-rA", "-l", "-n", str(workers)]
    proc = subprocess.run(args, cwd=run_dir, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert "3 failed, 2 passed, 1 skipped" in out, out[-4000:]
    assert f"test_parametrized_with_the_password[{MASK}] PASSED" in out or \
        f"PASSED test_leaky.py::test_parametrized_with_the_password[{MASK}]" in out, out[-4000:]
    (artifacts / "terminal.txt").write_text(out)     # the run's console output is a file of the run too

    # The scan over everything the run wrote, with the report's triage text.
    report = tmp_path / "report"
    scan = subprocess.run([XENHIL, "report", str(alluredir), "-o", str(report),
                           f"--results-db=sqlite://{db}", "--scan-secrets", str(lab["inventory"]),
                           "--scan-also", str(artifacts)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert scan.returncode == 0, scan.stdout[-4000:] + scan.stderr[-4000:]
    assert "secret scan: none of" in scan.stdout

    # Masked where the secrets were: nothing was dropped, the reviewer sees what happened.
    results = [json.loads(p.read_text()) for p in alluredir.glob("*-result.json")]
    failed = [r for r in results if r["status"] == "failed"]
    assert len(failed) == 3
    for result in failed:
        message = result["statusDetails"]["message"]
        assert "login refused" in message and f"as-is={MASK}" in message, message
        assert f"hex={MASK}" in message and f"URL-escaped={MASK}" in message
        names = {a["name"]: alluredir / a["source"] for a in result["attachments"]}
        for name in ("harness attachment", "raw allure attachment", "stdout", "log"):
            text = names[name].read_text()
            assert f"as-is: {MASK}" in text and f"hex: {MASK}" in text, (name, text[:500])
    tool_logs = sorted((artifacts / "secrets-run").rglob("tool.log"))
    assert len(tool_logs) == 3
    for path in tool_logs:
        assert f"bmc password as-is: {MASK}" in path.read_text()
    with sqlite3.connect(db) as conn:
        messages = [m for (m,) in conn.execute("SELECT message FROM outcomes WHERE outcome != 'passed'")]
    conn.close()
    assert len(messages) == 4 and all(MASK in m for m in messages), messages
    assert sum(m.startswith("AssertionError: login refused") for m in messages) == 3, messages
    assert "Skipped: no BMC answered to ***" in messages, messages
    with sqlite3.connect(db) as conn:
        tests = {t for (t,) in conn.execute("SELECT test FROM outcomes")}
    conn.close()
    assert f"test_leaky.py::test_parametrized_with_the_password[{MASK}]" in tests, tests
    triage = (report / "triage.txt").read_text()
    assert triage.count(f"as-is={MASK}") == 3, triage
    assert f"as-is: {MASK}" in out

    # One copy back into each kind of file: the scan fails naming that file.
    from xenhil.harness.lab.inventory import load_inventory
    from xenhil.harness.results.secret_scan import inventory_secrets, scan as scan_files
    monkeypatch.setenv(PASSWORD_VAR, lab["password"])
    found = inventory_secrets(load_inventory(lab["inventory"]))
    targets = [alluredir, report, db, artifacts]
    assert scan_files(targets, found) == []
    key_line = [line for line in lab["key"].splitlines() if not line.startswith("-----")][1]
    result_json = next(alluredir.glob("*-result.json"))
    attachment = next(alluredir.glob("*-attachment.txt"))
    plants = {
        "Allure result": (result_json, lab["password"], "as-is"),
        "attachment": (attachment, lab["passphrase"], "base64"),
        "artifacts text": (tool_logs[0], key_line, "hex"),
        "triage text": (report / "triage.txt", lab["password"], "URL-escaped"),
        "terminal output": (artifacts / "terminal.txt", lab["passphrase"], "JSON-escaped"),
        "pytest log": (log_file, lab["password"], "prefix"),
        "HTML report": (next(p for p in sorted(report.rglob("*.json"))), key_line, "as-is"),
    }
    for kind, (path, value, form) in plants.items():
        original = path.read_bytes()
        path.write_bytes(original + f"\n{_encoded(value)[form]}\n".encode())
        try:
            leaks = scan_files(targets, found)
        finally:
            path.write_bytes(original)
        assert [leak.path for leak in leaks] == [path], (kind, form, leaks)
    # A name is written too: a file or a folder named with a secret.
    for value, form, kind in ((lab["password"], "hex", "file"), (lab["passphrase"], "URL-escaped", "folder")):
        named = tool_logs[0].parent / f"dump-{_encoded(value)[form]}"      # neither has a '/'
        named.mkdir() if kind == "folder" else named.write_text("nothing secret inside")
        try:
            leaks = scan_files(targets, found)
        finally:
            named.rmdir() if kind == "folder" else named.unlink()
        assert [leak.path for leak in leaks] == [named], (kind, form, leaks)
        assert leaks[0].what.endswith("in its name")
    # The results store: a value written through SQLite, in its own encoding.
    for value, form in ((lab["password"], "base64"), (key_line, "as-is")):
        saved = {p: p.read_bytes() for p in artifacts.glob("results.sqlite*")}
        conn = sqlite3.connect(db)
        conn.execute("UPDATE outcomes SET message = message || ? WHERE rowid = "
                     "(SELECT min(rowid) FROM outcomes)", (" " + _encoded(value)[form],))
        conn.commit()
        conn.close()
        try:
            leaks = scan_files(targets, found)
        finally:
            for p in artifacts.glob("results.sqlite*"):
                if p not in saved:
                    p.unlink()
            for p, data in saved.items():
                p.write_bytes(data)
        assert {leak.path for leak in leaks} == {db}, (form, leaks)
    assert scan_files(targets, found) == []

    # The lab's lease store is written by runs too (holders, quarantine
    # reasons, guests' failures): the command scans it, next to the inventory.
    lease_store = lab["inventory"].with_name(f".{lab['inventory'].stem}.leases.sqlite")
    kept = {p: p.read_bytes() for p in lease_store.parent.glob(lease_store.name + "*")}
    conn = sqlite3.connect(lease_store)
    conn.execute("CREATE TABLE planted (host TEXT, reason TEXT)")
    conn.execute("INSERT INTO planted VALUES ('bmc1', ?)", ("latched: " + _encoded(lab["password"])["base64"],))
    conn.commit()
    conn.close()
    try:
        lease_leak = subprocess.run([XENHIL, "report", str(alluredir), "-o", str(tmp_path / "report3"),
                                     f"--results-db=sqlite://{db}", "--scan-secrets", str(lab["inventory"]),
                                     "--scan-also", str(artifacts)],
                                    cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    finally:
        for p in lease_store.parent.glob(lease_store.name + "*"):
            p.unlink()
        for p, data in kept.items():
            p.write_bytes(data)
    assert lease_leak.returncode == 1, lease_leak.stdout[-3000:] + lease_leak.stderr[-3000:]
    assert f"SECRET LEAK: {lease_store} holds the power password of bmc1" in lease_leak.stdout, \
        lease_leak.stdout

    # And the command itself: exit 1, naming the file.
    path = tool_logs[-1]
    path.write_text(path.read_text() + _encoded(lab["passphrase"])["hex"])
    again = subprocess.run([XENHIL, "report", str(alluredir), "-o", str(tmp_path / "report2"),
                            f"--results-db=sqlite://{db}", "--scan-secrets", str(lab["inventory"]),
                            "--scan-also", str(artifacts)],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 1, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"SECRET LEAK: {path} holds the SSH key passphrase of key1" in again.stdout, again.stdout
