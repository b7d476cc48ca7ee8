"""Secrets never reach the Allure results, the artifacts or the logs.

The planted secrets are an IPMI password resolved from a real inventory's
``{env: ...}`` reference and the content of a real private key file
(ssh-keygen).  The tests of the inner runs leak them on purpose in every way a
suite could: a log line, stdout, an assertion message, a harness error, an
exception raised in a fixture and inside a @step, locals shown with -l,
attachments made with harness.attach and with allure.attach directly.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from xenhil.harness.secrets import (
    MASK,
    ScrubbingLogFilter,
    inline_secret_kind,
    redact_inline,
    register_private_key,
    register_secret,
    registered_secrets,
    scrub,
    scrub_bytes,
)

pytest_plugins = ["pytester"]

PASSWORD_VAR = "XENHIL_TEST_SECRET_IPMI_PASSWORD"

INVENTORY = """\
hosts:
  - name: h1
    address: 127.0.0.1
    ssh: none
    power: {kind: ipmi, address: 127.0.0.1, user: ADMIN, password: {env: %s}}
""" % PASSWORD_VAR

LEAKY_TESTS = """
    import logging
    import os
    from pathlib import Path

    import allure
    import pytest

    from xenhil.harness.attach import attach_file, attach_text
    from xenhil.harness.errors import InfrastructureError
    from xenhil.harness.lab.inventory import load_inventory
    from xenhil.harness.step import step

    log = logging.getLogger("suite.leaky")
    KEY_FILE = Path(os.environ["LEAKY_KEY_FILE"])

    def bmc_password():
        inventory = load_inventory(Path(os.environ["LEAKY_LAB"]))
        return inventory.host("h1").power.password.resolve()

    def test_logs_password_then_fails():
        password = bmc_password()
        log.warning("BMC login ADMIN/%s refused", password)
        print("stdout: trying password", password)
        attach_text(f"ipmitool -I lanplus -U ADMIN -P {password} power status", "bmc command")
        allure.attach(f"raw allure attachment with {password}", name="raw",
                      attachment_type=allure.attachment_type.TEXT)
        assert password == "the-expected-one", f"BMC refused password {password!r}"

    def test_private_key_in_harness_error():
        key = KEY_FILE.read_text()
        log.info("loaded key:\\n%s", key)
        attach_file(KEY_FILE, "ssh key", "text/plain")
        raise InfrastructureError(f"ssh refused key\\n{key}",
                                  evidence={"key file": str(KEY_FILE)})

    @pytest.fixture
    def bmc_session():
        raise RuntimeError(f"cannot open BMC session with {bmc_password()}")

    def test_secret_in_setup(bmc_session):
        pass

    @step("power cycle with {user}")
    def power_cycle(user, password):
        raise ConnectionError(f"BMC dropped the session of {user}:{password}")

    def test_secret_in_step():
        power_cycle("ADMIN", bmc_password())

    def test_secret_in_locals_and_teardown(request):
        password = bmc_password()
        key = KEY_FILE.read_text()
        request.addfinalizer(lambda: log.error("teardown saw %s", password))
        assert len(password) + len(key) == 0
"""


@pytest.fixture
def private_key(tmp_path: Path) -> Path:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen (openssh-client) is not installed")
    path = tmp_path / "keys" / "lab_ed25519"
    path.parent.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "xenhil-test",
                    "-f", str(path)], check=True, timeout=60)
    return path


def _files_under(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def _leaks(data: bytes, needles: dict[str, bytes]) -> list[str]:
    return [name for name, needle in needles.items() if needle in data]


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "xdist-2"])
def test_planted_secrets_never_reach_results_artifacts_or_logs(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        private_key: Path, workers: int) -> None:
    # A fresh password per run: the secret must be registered by this run's
    # CredentialRef.resolve(), not by an earlier test in this process.
    password = "ipmi-" + secrets.token_urlsafe(12)
    lab = tmp_path / "lab.yaml"
    lab.write_text(INVENTORY)
    monkeypatch.setenv(PASSWORD_VAR, password)
    monkeypatch.setenv("LEAKY_LAB", str(lab))
    monkeypatch.setenv("LEAKY_KEY_FILE", str(private_key))
    key_text = private_key.read_text()
    key_body = [line for line in key_text.splitlines() if not line.startswith("-----")]
    needles = {"password": password.encode(), "BEGIN PRIVATE KEY": b"BEGIN OPENSSH PRIVATE KEY"}
    needles.update({f"key line {i}": line.encode() for i, line in enumerate(key_body)})

    alluredir, artifacts = tmp_path / "allure", tmp_path / "artifacts"
    log_file = artifacts / "pytest.log"
    pytester.makepyfile(test_leaky=LEAKY_TESTS)
    args = [f"--alluredir={alluredir}", f"--artifacts={artifacts}", "--run-id=leaky",
            f"--log-file={log_file}", "--log-file-level=DEBUG", "-l", "-rA"]
    if workers:
        args += ["-n", str(workers)]
        result = pytester.runpytest_subprocess(*args, timeout=300)
    else:
        result = pytester.runpytest(*args)
    result.assert_outcomes(failed=4, errors=1)

    leaks = {}
    for path in _files_under(alluredir, artifacts):
        found = _leaks(path.read_bytes(), needles)
        if found:
            leaks[str(path.relative_to(tmp_path))] = found
    for name, text in (("terminal stdout", result.stdout.str()), ("terminal stderr", result.stderr.str())):
        found = _leaks(text.encode(), needles)
        if found:
            leaks[name] = found
    assert leaks == {}, f"secrets leaked: {leaks}"

    # The evidence is still there, masked, not dropped: the reviewer sees what happened.
    results = {}
    for path in alluredir.glob("*-result.json"):
        data = json.loads(path.read_text())
        results[data["name"]] = data
    logs_failed = results["test_logs_password_then_fails"]
    assert "BMC refused password '***'" in logs_failed["statusDetails"]["message"]
    assert "[product]" in logs_failed["statusDetails"]["message"]
    attached = {a["name"]: (alluredir / a["source"]).read_text() for a in logs_failed["attachments"]}
    assert attached["bmc command"] == "ipmitool -I lanplus -U ADMIN -P *** power status"
    assert attached["raw"] == "raw allure attachment with ***"
    assert "BMC login ADMIN/*** refused" in attached["log"]
    assert "stdout: trying password ***" in attached["stdout"]

    key_failed = results["test_private_key_in_harness_error"]
    assert key_failed["statusDetails"]["message"].startswith(
        "xenhil.harness.errors.InfrastructureError: [infrastructure] ssh refused key\n***")
    key_attachment = {a["name"]: a for a in key_failed["attachments"]}["ssh key"]
    assert (alluredir / key_attachment["source"]).read_text().strip() == MASK

    step = results["test_secret_in_step"]["steps"][0]
    assert step["name"] == "power cycle with ADMIN"
    assert "session of ADMIN:***" in step["statusDetails"]["message"]
    assert "cannot open BMC session with ***" in results["test_secret_in_setup"]["statusDetails"]["message"]

    copy = artifacts / "leaky" / "tests" / "test_leaky.py--test_logs_password_then_fails" / "bmc-command.txt"
    assert copy.read_text() == "ipmitool -I lanplus -U ADMIN -P *** power status"
    if not workers:  # xdist workers all write (and truncate) the same --log-file
        assert "BMC login ADMIN/*** refused" in log_file.read_text()
    # The results store keeps the last line of each failure, scrubbed too.
    assert (artifacts / "results.sqlite").exists()


def test_scrub_masks_registered_values_in_plain_repr_and_json_forms() -> None:
    secret = "pa'ss\\wörd-" + secrets.token_hex(4)
    register_secret(secret)
    assert scrub(f"login {secret} failed") == "login *** failed"
    # repr() escapes the backslash (and picks double quotes for the quote inside)
    assert scrub(f"assert {secret!r} == 'x'") == """assert "***" == 'x'"""
    assert scrub(json.dumps({"pw": secret})) == '{"pw": "***"}'
    assert scrub_bytes(f"raw {secret}".encode()) == b"raw ***"
    # An explicit list overrides the registry.
    assert scrub("alpha beta", ["beta"]) == "alpha ***"


def test_scrub_masks_longest_secret_first_and_ignores_too_short_values() -> None:
    inner = "tok-" + secrets.token_hex(4)
    outer = inner + "-suffix"
    assert scrub(f"a {outer} b {inner}", [inner, outer]) == "a *** b ***"
    register_secret("ab")  # too short to scrub without wrecking reports: warned, not kept
    assert "ab" not in registered_secrets()
    assert scrub("about a tab") == "about a tab"


def test_private_key_blocks_are_masked_whole_and_when_cut_off(private_key: Path) -> None:
    key = private_key.read_text()
    text = f"before\n{key}after"
    assert scrub(text, []) == "before\n***\nafter"
    cut = "tail of a log:\n" + key[: len(key) // 2]
    assert scrub(cut, []) == "tail of a log:\n***"
    for kind in ("RSA", "EC", "ENCRYPTED", "DSA"):
        block = f"-----BEGIN {kind} PRIVATE KEY-----\nMIIB\n-----END {kind} PRIVATE KEY-----"
        assert scrub(f"x {block} y", []) == "x *** y"
    # Public keys and certificates are not secrets.
    public = private_key.with_suffix(".pub").read_text()
    assert scrub(public, []) == public


def test_one_line_of_a_registered_private_key_is_masked(private_key: Path) -> None:
    key = private_key.read_text()
    register_private_key(key)
    body_line = key.splitlines()[2]
    assert scrub(f"debug: {body_line}") == "debug: ***"


def test_log_filter_scrubs_message_arguments_and_exception_text() -> None:
    import logging
    secret = "filter-" + secrets.token_hex(6)
    register_secret(secret)
    try:
        raise ValueError(f"bad {secret}")
    except ValueError:
        import sys
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "using %s", (secret,), sys.exc_info())
    assert ScrubbingLogFilter().filter(record) is True
    text = logging.Formatter().format(record)
    assert secret not in text
    assert "using ***" in text and "ValueError: bad ***" in text


def test_secret_scan_finds_an_inventorys_secrets_under_result_folders(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private_key: Path) -> None:
    from xenhil.harness.lab.inventory import load_inventory
    from xenhil.harness.results.secret_scan import inventory_secrets, scan

    password = "ipmi-" + secrets.token_urlsafe(12)
    monkeypatch.setenv(PASSWORD_VAR, password)
    lab = tmp_path / "lab.yaml"
    host_key = (private_key.with_suffix(".pub").read_text().split()[:2])
    lab.write_text(INVENTORY + f"  - name: h2\n    address: 127.0.0.2\n"
                               f"    ssh: {{key_file: {private_key}, host_key: \"{' '.join(host_key)}\"}}\n"
                               f"    power: {{kind: none}}\n")
    found = inventory_secrets(load_inventory(lab))
    assert found[password] == "power password of h1"
    key_line = [line for line in private_key.read_text().splitlines() if not line.startswith("---")][1]
    assert found[key_line] == f"private key {private_key} of h2"

    clean, dirty = tmp_path / "clean", tmp_path / "dirty"
    (clean / "sub").mkdir(parents=True)
    (clean / "sub" / "result.json").write_text('{"message": "password ***"}')
    (dirty / "attach").mkdir(parents=True)
    (dirty / "attach" / "log.txt").write_text(f"login with {password}\n{key_line}\n")
    assert scan([clean], found) == []
    leaks = sorted((leak.path.name, leak.what) for leak in scan([clean, dirty], found))
    assert leaks == [("log.txt", "power password of h1"), ("log.txt", f"private key {private_key} of h2")]


@pytest.mark.parametrize("text, shown", [
    ("postgresql://lab:pw1234@db/leases", "postgresql://lab:***@db/leases"),
    ("lease_db: 'postgresql://lab:p@ss@w0rd@db/leases'", "lease_db: 'postgresql://lab:***@db/leases'"),
    ("curl https://admin:pw@bmc/on@x", "curl https://admin:***@x"),
    ("https://bmc/on and ssh root@h", "https://bmc/on and ssh root@h"),
    ("root:hunter22@192.0.2.1", "root:***@192.0.2.1"),
    ("host=db dbname=lab password='a b c'", "host=db dbname=lab password=***"),
    ("postgresql://lab@db/l?sslpassword=x1&a=b", "postgresql://lab@db/l?sslpassword=***&a=b"),
    ("ipmitool -H b -U u -P pw9 power on", "ipmitool -H b -U u -P *** power on"),
    ("ipmitool -Ppw9 power off", "ipmitool -P*** power off"),
    ("bmctool --password=pw9 cycle", "bmctool --password=*** cycle"),
    ("sshpass -p pw9 ssh bmc", "sshpass -p *** ssh bmc"),
    ("IPMI_PASSWORD=pw9 ipmitool -E on", "IPMI_PASSWORD=*** ipmitool -E on"),
    ("ipmitool -E -I lanplus power on", "ipmitool -E -I lanplus power on"),
    ("ipmitool -I lanplus -p 623 -U admin -E power on", "ipmitool -I lanplus -p 623 -U admin -E power on"),
    ("ipmitool -I lanplus -k kg1234 -E power on", "ipmitool -I lanplus -k *** -E power on"),
    ("racadm -r bmc -u root -p pw9 serveraction powerup", "racadm -r bmc -u root -p *** serveraction powerup"),
    ("ipmipower -h bmc -u admin -p pw9 --on", "ipmipower -h bmc -u admin -p *** --on"),
    ("curl -u admin:pw9 https://bmc/on", "curl -u admin:*** https://bmc/on"),
    ("curl --user=admin:pw9 https://bmc/on", "curl --user=admin:*** https://bmc/on"),
    ("ssh -p 2222 root@bmc", "ssh -p 2222 root@bmc"),
])
def test_redact_inline_masks_each_place_a_secret_hides(text: str, shown: str) -> None:
    assert redact_inline(text) == shown
    assert (inline_secret_kind(text) is None) == (text == shown)


# Texts that made the old patterns backtrack: every position a possible start
# (a URL scheme, a PEM BEGIN line without its END), none of them matching.
HOSTILE_TEXTS = {
    "one long word": "x" * 400_000,
    "schemes without '@'": "http://a:" * 40_000,
    "schemes after the last '@'": "@" + "http://a:b" * 40_000,
    "key BEGIN lines without END": "-----BEGIN RSA PRIVATE KEY-----x" * 12_000,
    "key END lines": "-----END RSA PRIVATE KEY-----" * 12_000,
    "option flags": "-P " * 100_000,
    "tool names without their password option": "racadm ipmitool ipmi-sol " * 16_000,
    "user options without a password": "curl -u admin " * 30_000,
}


@pytest.mark.parametrize("name", HOSTILE_TEXTS)
def test_masking_takes_time_linear_in_the_text(name: str) -> None:
    """Hostile input reaches error messages and test output reaches the
    scrubber: 400 000 characters in about a second at most (the patterns
    before took minutes on the first three)."""
    import time
    text = HOSTILE_TEXTS[name]
    started = time.process_time()
    redact_inline(text)
    inline_secret_kind(text)
    scrub(text, [])
    scrub_bytes(text.encode(), [])
    assert time.process_time() - started < 3.0


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "xdist-2"])
def test_an_id_given_by_hand_that_holds_a_secret_is_masked_before_anything_prints_it(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workers: int) -> None:
    """A parameter's own id is masked by pytest's id hook; an id written by
    hand never passes it, so the test is renamed at collection, each id kept
    distinct, alike in every xdist worker (their collections must agree)."""
    password = "ipmi-" + secrets.token_urlsafe(12)
    lab = tmp_path / "lab.yaml"
    lab.write_text(INVENTORY)       # nothing connects to its BMC
    monkeypatch.setenv(PASSWORD_VAR, password)
    pytester.makepyfile(test_ids=f"""
        import os, pytest
        PW = os.environ["{PASSWORD_VAR}"]

        @pytest.mark.parametrize("n", [pytest.param(1, id=PW), pytest.param(2, id="x" + PW),
                                       pytest.param(3, id=PW + "-again")])
        def test_named_after_the_password(n):
            assert n != 2
    """)
    alluredir, artifacts = tmp_path / "allure", tmp_path / "artifacts"
    args = [f"--lab={lab}", f"--artifacts={artifacts}", f"--alluredir={alluredir}", "-v", "-rA",
            f"--junitxml={tmp_path / 'junit.xml'}", "-n", str(workers)]
    result = (pytester.runpytest_subprocess(*args, timeout=300) if workers else pytester.runpytest(*args))
    output = result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=2, failed=1)
    assert "INTERNALERROR" not in output and password not in output, output
    for shown in ("test_named_after_the_password[***]", "test_named_after_the_password[x***]",
                  "test_named_after_the_password[***-again]"):
        assert shown in output, output
    written = [p for p in tmp_path.rglob("*") if p.is_file() and password.encode() in p.read_bytes()]
    assert written == [] and (alluredir.exists() and (tmp_path / "junit.xml").exists()), written


def test_a_postgresql_stores_password_is_a_secret_of_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store URL holds no password (refused when it does): libpq takes it
    from $PGPASSWORD or the password file, so those are masked and scanned
    for when a store is PostgreSQL, and nothing is asked when it is not."""
    from xenhil.harness.lab.credentials import libpq_passwords, resolve_all
    from xenhil.harness.lab.inventory import load_inventory
    from xenhil.harness.results.secret_scan import inventory_secrets, scan

    env_pw, file_pw = "pg-" + secrets.token_hex(6), "a:b\\c-" + secrets.token_hex(6)
    passfile = tmp_path / "pgpass"
    passfile.write_text("# comment\n"
                        f"db.example:5432:leases:lab:{file_pw.replace(chr(92), chr(92) * 2).replace(':', chr(92) + ':')}\n"
                        "*:*:*:other:\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSWORD", env_pw)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    assert libpq_passwords() == {env_pw: "$PGPASSWORD", file_pw: str(passfile)}

    host = "  - name: h1\n    address: 127.0.4.1\n    ssh: none\n    power: {kind: none}\n"
    sqlite_lab, pg_lab = tmp_path / "sqlite.yaml", tmp_path / "pg.yaml"
    sqlite_lab.write_text(f"lease_db: sqlite:///{tmp_path}/leases.sqlite\nhosts:\n{host}")
    pg_lab.write_text(f"lease_db: postgresql://lab@db.example/leases\nhosts:\n{host}")
    assert resolve_all(load_inventory(sqlite_lab)) == ({}, [])
    assert set(resolve_all(load_inventory(sqlite_lab), ("postgresql://lab@db/results",))[0]) == {env_pw, file_pw}
    found = inventory_secrets(load_inventory(pg_lab))
    assert set(found) == {env_pw, file_pw}
    assert scrub(f"env: PGPASSWORD={env_pw}") == f"env: PGPASSWORD={MASK}"

    results = tmp_path / "results"
    results.mkdir()
    (results / "env.txt").write_text("PGPASSWORD=" + env_pw.encode().hex())
    leaks = scan([results], found)
    assert [(leak.path.name, leak.what) for leak in leaks] == [
        ("env.txt", "PostgreSQL store password ($PGPASSWORD) (hex)")]


def test_a_quarantine_reason_is_kept_and_shown_masked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A reason is free text kept in the lease store and shown to everyone
    by `lab status`: a secret typed into it (registered, or inline) is masked
    before it is stored."""
    from xenhil.harness.cli.main import main
    password = "bmc-" + secrets.token_hex(8)
    monkeypatch.setenv(PASSWORD_VAR, password)
    lab, store = tmp_path / "lab.yaml", tmp_path / "leases.sqlite"
    lab.write_text(INVENTORY)
    common = ["--lab", str(lab), "--lab-db", f"sqlite://{store}"]
    reason = f"BMC takes {password} only; curl -u admin:inline-pw9 works"
    assert main(["lab", "quarantine", "h1", "--reason", reason, *common]) == 0
    assert main(["lab", "status", *common]) == 0
    out = capsys.readouterr().out
    assert "BMC takes *** only; curl -u admin:*** works" in out, out
    assert password not in out and "inline-pw9" not in out
    data = b"".join(p.read_bytes() for p in tmp_path.glob("leases.sqlite*"))
    assert password.encode() not in data and b"inline-pw9" not in data


def test_parameters_holding_a_secret_as_text_bytes_or_a_number_get_masked_ids(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """pytest writes str, bytes and numbers into a test id as they are: each
    holding a registered secret is masked, and ids the mask made equal are
    numbered by pytest, so every test keeps an id of its own."""
    password = str(secrets.randbelow(10**12) + 10**12)        # a numeric BMC password
    lab = tmp_path / "lab.yaml"
    lab.write_text(INVENTORY)       # nothing connects to its BMC
    monkeypatch.setenv(PASSWORD_VAR, password)
    pytester.makepyfile(test_params=f"""
        import os, pytest
        PW = os.environ["{PASSWORD_VAR}"]

        @pytest.mark.parametrize("value", [PW, PW.encode(), int(PW), "x" + PW, "plain"])
        def test_login(value):
            pass
    """)
    result = pytester.runpytest(f"--lab={lab}", f"--artifacts={tmp_path / 'artifacts'}",
                                "--collect-only", "-q")
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == 0, output
    ids = sorted(line.split("[", 1)[1].rstrip("]") for line in result.stdout.lines if "::test_login[" in line)
    assert password not in output, output
    assert len(ids) == 5 and len(set(ids)) == 5, ids
    assert "plain" in ids and "x***" in ids and sum(i.startswith("***") for i in ids) == 3, ids


def test_the_end_of_run_sweep_renames_files_and_folders_named_after_a_secret(tmp_path):
    """A tool's output named after its command line, or a test's folder named
    after its id, can carry a secret in its name, which a report's file list
    shows: the sweep renames it (deepest first), keeps its content (scrubbed)
    and never overwrites a file that has the masked name already."""
    from xenhil.harness.attach import scrub_files
    from xenhil.harness.secrets import MASK, register_secret
    secret = "sweep-name-" + os.urandom(6).hex()
    register_secret(secret)
    folder = tmp_path / f"test_login[{secret}]"
    folder.mkdir()
    (folder / f"ipmitool-P-{secret}.log").write_text(f"ran ipmitool -P {secret}\n")
    (folder / "console.log").write_text("clean\n")
    (tmp_path / f"x-{MASK}").write_text("taken\n")
    (tmp_path / f"x-{secret}").write_text("kept\n")

    changed = scrub_files([tmp_path])

    names = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert not any(secret in n for n in names), names
    moved = tmp_path / f"test_login[{MASK}]"
    assert (moved / f"ipmitool-P-{MASK}.log").read_text() == f"ran ipmitool -P {MASK}\n"
    assert (moved / "console.log").read_text() == "clean\n"
    assert (tmp_path / f"x-{MASK}").read_text() == "taken\n"
    assert (tmp_path / f"x-{MASK}.2").read_text() == "kept\n"
    assert moved in changed and tmp_path / f"x-{MASK}.2" in changed
