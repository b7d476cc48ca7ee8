"""The lab inventory loader: every malformed inventory is rejected with the
file, host, field and fix named; good inventories become the typed model."""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from xenhil.harness.cli.lab_check import check_command
from xenhil.harness.errors import ConfigError
from xenhil.harness.lab.inventory import (InventoryError, check_inventory, inventory_schema,
                                          load_inventory, parse_host_key)
from xenhil.harness.lab.inventory_learn import fingerprint
from xenhil.harness.lab.model import KNOWN_CAPABILITIES, CredentialRef, HostSpec, PowerConfig, SSHConfig
from tests.support.sshd import SSHServer, fresh_sshd_server  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "inventories"
BAD = sorted((DATA / "bad").glob("*.yaml"))
KEY1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPd7WM0E19rgBWdZAytK2D3VoNDGTzY2Ixp3zzyNmGne"
KEY1_FINGERPRINT = "SHA256:ZKPvpO1wMv2EbrhZOYEqR7cSbMV7bAbHYiGZaMbX4xE"  # ssh-keygen -lf
SECRET_MARK = "hunter2"  # inline passwords in the bad files contain it; no message may


# --- bad inventories -----------------------------------------------------

def _expectations(path: Path) -> dict[str, str]:
    """The '# expect-NAME: value' header of a bad inventory."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"# expect-([a-z]+): ?(.*)$", line)
        if match:
            found[match.group(1)] = match.group(2)
    assert {"host", "field", "message", "fix"} <= set(found), f"{path.name}: header incomplete"
    return found


def _expected_host(text: str) -> str | int | None:
    if text == "-":
        return None
    return int(text) if text.isdigit() else text


def test_there_are_at_least_30_bad_inventories():
    assert len(BAD) >= 30


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_inventory_names_file_host_field_and_fix(path: Path):
    expect = _expectations(path)
    shown = str(path)
    problems = check_inventory(path)

    assert len(problems) == int(expect.get("count", 1)), "\n".join(map(str, problems))
    host = _expected_host(expect["host"])
    field = "" if expect["field"] == "-" else expect["field"]
    matching = [p for p in problems
                if p.host == host and field in (p.field, p.field_in_host)
                and expect["message"] in p.message and expect["fix"] in p.fix]
    assert matching, (f"no problem with host={host!r} field={field!r} "
                      f"message~{expect['message']!r} fix~{expect['fix']!r} in:\n"
                      + "\n".join(map(str, problems)))
    problem = matching[0]
    assert problem.file == shown
    if "line" in expect:
        assert problem.line == int(expect["line"])

    text = str(problem)
    assert text.startswith(shown)
    assert expect["message"] in text and f"; fix: {problem.fix}" in text
    if isinstance(host, str):
        assert f"host {host!r}" in text
    for p in problems:
        assert SECRET_MARK not in str(p)

    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    assert caught.value.problems == problems
    assert isinstance(caught.value, ConfigError)
    message = str(caught.value)
    assert all(str(p) in message.splitlines() for p in problems)
    assert SECRET_MARK not in message


def test_inline_password_message_has_the_documented_form():
    path = DATA / "bad" / "inline_password.yaml"
    [problem] = check_inventory(path)
    assert str(problem) == (
        f"{path}:14: host 'h1': field power.password: inline passwords are not allowed; "
        "fix: use password: {env: H1_IPMI_PASSWORD} or password: {file: PATH}")
    assert problem.field == "hosts[0].power.password"


def test_all_problems_are_reported_not_just_the_first(tmp_path: Path):
    inventory = tmp_path / "lab.yaml"
    inventory.write_text(f"""\
hosts:
  - name: a
    address: 127.0.0.1
    capabilities: {{iomu: true}}
    ssh: {{port: 0, host_key: "{KEY1}"}}
    power: {{kind: ipmi, address: 127.0.0.100, user: u, password: hunter2-x}}
  - name: a
    address: 127.0.0.2
    ssh: {{key_file: nowhere, host_key: "{KEY1}"}}
    power: {{kind: none}}
""")
    problems = check_inventory(inventory)
    fields = [(p.host, p.field) for p in problems]
    assert fields == [
        ("a", "hosts[0].capabilities.iomu"),
        ("a", "hosts[0].ssh.port"),
        ("a", "hosts[0].power.password"),
        ("a", "hosts[1].name"),
        ("a", "hosts[1].ssh.key_file"),
    ]
    assert [p.line for p in problems] == [4, 5, 6, 7, 9]


def test_missing_file_is_a_problem_not_a_traceback(tmp_path: Path):
    [problem] = check_inventory(tmp_path / "nope.yaml")
    assert "does not exist" in problem.message and "XENHIL_LAB" in problem.fix


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_key_file(tmp_path: Path):
    key = tmp_path / "id"
    key.write_text("x")
    key.chmod(0)
    inventory = tmp_path / "lab.yaml"
    inventory.write_text(f'hosts: [{{name: a, address: 127.0.0.1, power: {{kind: none}}, '
                         f'ssh: {{key_file: id, host_key: "{KEY1}"}}}}]\n')
    [problem] = check_inventory(inventory)
    assert problem.field == "hosts[0].ssh.key_file" and "cannot be read" in problem.message


def test_hashed_known_hosts_entry_is_found(tmp_path: Path):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.9]:2200 {KEY1}\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(known_hosts)], check=True,
                   capture_output=True)
    assert "127.0.0.9" not in known_hosts.read_text()  # really hashed
    inventory = tmp_path / "lab.yaml"
    inventory.write_text("hosts: [{name: a, address: 127.0.0.9, power: {kind: none}, "
                         "ssh: {port: 2200, known_hosts: known_hosts}}]\n")
    assert load_inventory(inventory).host("a").ssh.known_hosts == known_hosts


def test_yaml_merge_keys_share_settings_without_false_duplicates(tmp_path: Path):
    inventory = tmp_path / "lab.yaml"
    inventory.write_text(f"""\
hosts:
  - &intel
    name: a
    address: 127.0.0.1
    capabilities: {{cpu_vendor: intel, virt: vmx}}
    ssh: {{host_key: "{KEY1}"}}
    power: {{kind: none}}
  - <<: *intel
    name: b
    address: 127.0.0.2
""")
    hosts = load_inventory(inventory).hosts
    assert hosts["b"].capabilities == hosts["a"].capabilities == {"cpu_vendor": "intel",
                                                                  "virt": "vmx"}
    assert hosts["b"].ssh.address == "127.0.0.2"


# --- parse_host_key ------------------------------------------------------

def test_parse_host_key_accepts_public_key_lines_with_comment():
    key_type, blob = parse_host_key(KEY1 + " root@somewhere")
    assert key_type == "ssh-ed25519" and fingerprint(blob) == KEY1_FINGERPRINT


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("ssh-ed25519", "missing"),
    ("ssh-ed25519 AAAA!!!!", "not valid base64"),
    ("ssh-ed25519 AAAA", "too short"),
])
def test_parse_host_key_rejects(text: str, reason: str):
    with pytest.raises(ValueError, match=reason):
        parse_host_key(text)


# --- good inventories ----------------------------------------------------

def test_full_inventory_round_trips_into_the_model():
    keys = DATA / "keys"
    inventory = load_inventory(DATA / "good" / "full.yaml")
    assert inventory.path == DATA / "good" / "full.yaml"
    assert inventory.lease_db == "sqlite:///tmp/xenhil-test-leases.sqlite"
    assert list(inventory.hosts) == ["intel1", "amd1", "consoleonly", "sol-from-power"]

    intel = inventory.host("intel1")
    assert intel.address == "127.0.0.1"
    assert intel.tags == frozenset({"intel", "rack1"})
    assert intel.capabilities == {"cpu_vendor": "intel", "virt": "vmx", "iommu": True,
                                  "ram_mb": 65536, "cpus": 16, "emulated": False}
    # paths resolved against the inventory's directory; the .pub comment dropped
    assert intel.ssh == SSHConfig(address="127.0.0.1", port=2201, user="admin",
                                  key_file=keys / "id_test", host_key=KEY1,
                                  passphrase=CredentialRef(env="XENHIL_TEST_KEY_PASSPHRASE"))
    assert (intel.serial.kind, intel.serial.host, intel.serial.port) == ("tcp", "127.0.0.1", 7001)
    # references are kept as references, never resolved at load time
    assert intel.power == PowerConfig(kind="ipmi", address="127.0.0.101", port=6230,
                                      user="ADMIN",
                                      password=CredentialRef(env="INTEL1_IPMI_PASSWORD"))

    amd = inventory.host("amd1")
    assert amd.address == "127.0.0.2"
    assert (amd.ssh.address, amd.ssh.port, amd.ssh.user) == ("127.0.0.1", 2222, "root")
    assert amd.ssh.host_key is None and amd.ssh.known_hosts == keys / "known_hosts"
    assert amd.serial.kind == "ipmi-sol"
    assert (amd.serial.host, amd.serial.port, amd.serial.user) == ("127.0.0.102", 623, "sol")
    assert amd.serial.password == CredentialRef(file=DATA / "secrets" / "bmc-password")
    assert amd.power.kind == "ssh-reboot"

    console_only = inventory.host("consoleonly")
    assert console_only.ssh is None
    assert console_only.serial.command == "socat - TCP:127.0.0.4:7004"
    # YAML 1.2 booleans: "on"/"off" stay keys, not True/False
    assert console_only.power.commands == {"on": "pdu 4 on", "off": "pdu 4 off",
                                           "cycle": "pdu 4 cycle", "status": "pdu 4 status"}

    sol = inventory.host("sol-from-power")
    assert (sol.serial.host, sol.serial.port, sol.serial.user) == ("127.0.0.103", 623, "ADMIN")
    assert sol.serial.password == sol.power.password == CredentialRef(
        file=DATA / "secrets" / "bmc-password")
    assert sol.ssh.port == 22 and sol.capabilities == {"emulated": True}


def test_minimal_inventory_gets_the_defaults():
    host = load_inventory(DATA / "good" / "minimal.yaml").host("solo")
    assert host.ssh == SSHConfig(address="127.0.0.1", port=22, user="root", host_key=KEY1)
    assert host.serial is None
    assert host.power == PowerConfig(kind="none")
    assert host.tags == frozenset() and host.capabilities == {}


def test_relative_paths_follow_the_inventory_not_the_current_directory(tmp_path, monkeypatch):
    lab = tmp_path / "lab"
    (lab / "keys").mkdir(parents=True)
    (lab / "keys" / "id").write_text("x")
    (lab / "lab.yaml").write_text(
        f'hosts: [{{name: a, address: 127.0.0.1, power: {{kind: ipmi, address: 127.0.0.5, '
        f'user: u, password: {{file: keys/id}}}}, '
        f'ssh: {{key_file: keys/id, host_key: "{KEY1}"}}}}]\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    host = load_inventory(Path("../lab/lab.yaml")).host("a")
    assert host.ssh.key_file == lab / "keys" / "id"
    assert host.power.password.file == lab / "keys" / "id"
    os.chdir(tmp_path)
    assert host.ssh.key_file.is_absolute() and host.ssh.key_file.exists()


def test_example_inventory_is_valid_once_its_files_exist(tmp_path, monkeypatch):
    example = REPO / "lab" / "example.yaml"
    # As shipped, only the files a real lab must create are missing.
    problems = check_inventory(example)
    assert sorted(p.field for p in problems) == [
        "hosts[0].ssh.key_file", "hosts[1].serial.password.file", "hosts[1].ssh.key_file"]

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / ".ssh").mkdir(parents=True)
    (tmp_path / "home" / ".ssh" / "xenhil_lab_ed25519").write_text("x")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "amd1-bmc-password").write_text("x")
    copy = tmp_path / "example.yaml"
    copy.write_text(example.read_text())
    inventory = load_inventory(copy)
    intel, amd = inventory.host("intel1"), inventory.host("amd1")
    assert intel.capabilities["virt"] == "vmx" and intel.power.kind == "ipmi"
    assert intel.serial.kind == "tcp"
    assert amd.capabilities["virt"] == "svm" and amd.power.kind == "ssh-reboot"
    assert amd.serial.kind == "ipmi-sol" and amd.serial.host == "192.0.2.112"


# --- schema --------------------------------------------------------------

def test_schema_is_valid_draft_2020_12_package_data():
    schema = inventory_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_schema_capabilities_agree_with_the_model():
    capabilities = inventory_schema()["$defs"]["capabilities"]
    json_type = {str: "string", bool: "boolean", int: "integer"}
    assert capabilities["additionalProperties"] is False
    assert {name: spec["type"] for name, spec in capabilities["properties"].items()} == \
        {name: json_type[kind] for name, kind in KNOWN_CAPABILITIES.items()}


def test_every_object_in_the_schema_rejects_unknown_keys():
    def objects(node):
        if isinstance(node, dict):
            if node.get("type") == "object":
                yield node
            for value in node.values():
                yield from objects(value)
        elif isinstance(node, list):
            for value in node:
                yield from objects(value)

    found = list(objects(inventory_schema()))
    assert len(found) >= 7
    assert all(node.get("additionalProperties") is False for node in found), json.dumps(found)


# --- model: CredentialRef, HostSpec, Inventory --------------------------

def test_credential_ref_resolves_from_env(monkeypatch):
    monkeypatch.setenv("XENHIL_TEST_SECRET", "s3cret")
    ref = CredentialRef(env="XENHIL_TEST_SECRET")
    assert ref.resolve() == "s3cret"
    assert "s3cret" not in repr(ref)


def test_credential_ref_unset_env_says_what_to_export(monkeypatch):
    monkeypatch.delenv("XENHIL_TEST_SECRET", raising=False)
    with pytest.raises(ConfigError, match="XENHIL_TEST_SECRET is not set") as caught:
        CredentialRef(env="XENHIL_TEST_SECRET").resolve()
    assert "export XENHIL_TEST_SECRET" in caught.value.help


def test_credential_ref_resolves_from_file(tmp_path: Path):
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    assert CredentialRef(file=secret).resolve() == "from-file"
    with pytest.raises(ConfigError, match="missing cannot be read: it does not exist"):
        CredentialRef(file=tmp_path / "missing").resolve()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)   # would block a plain read forever
    with pytest.raises(ConfigError, match="is a FIFO"):
        CredentialRef(file=fifo).resolve()
    with pytest.raises(ConfigError, match="empty credential reference"):
        CredentialRef().resolve()


def test_credential_ref_from_inventory_resolves_relative_to_it(tmp_path: Path):
    (tmp_path / "bmc").write_text("bmc-pass\n")
    (tmp_path / "lab.yaml").write_text(
        f'hosts: [{{name: a, address: 127.0.0.1, ssh: {{host_key: "{KEY1}"}}, power: '
        '{kind: ipmi, address: 127.0.0.5, user: u, password: {file: bmc}}}]\n')
    assert load_inventory(tmp_path / "lab.yaml").host("a").power.password.resolve() == "bmc-pass"


def _spec(tags=(), **capabilities) -> HostSpec:
    return HostSpec(name="h", address="127.0.0.1", ssh=None, serial=None,
                    power=PowerConfig(kind="none"), tags=frozenset(tags),
                    capabilities=capabilities)


def test_host_spec_matches_tags_and_capabilities():
    host = _spec({"intel", "rack1"}, virt="vmx", iommu=True)
    assert host.matches()
    assert host.matches({"intel"}, {"virt": "vmx"})
    assert host.matches({"intel", "rack1"}, {"virt": "vmx", "iommu": True})
    assert not host.matches({"amd"})
    assert not host.matches({"intel", "rack2"})
    assert not host.matches(capabilities={"virt": "svm"})
    assert not host.matches(capabilities={"ram_mb": 1024})  # undeclared: no match


def test_inventory_host_lookup_names_the_known_hosts():
    inventory = load_inventory(DATA / "good" / "full.yaml")
    with pytest.raises(ConfigError) as caught:
        inventory.host("nope")
    assert "nope" in str(caught.value) and "amd1, consoleonly, intel1" in caught.value.help


# --- CLI: xenhil lab check -----------------------------------------------

def _check(*, file=None, learn=False, lab=None) -> tuple[int, str]:
    out = io.StringIO()
    status = check_command(argparse.Namespace(file=file, learn=learn, lab=lab), out=out)
    return status, out.getvalue()


def test_check_command_ok():
    path = DATA / "good" / "full.yaml"
    assert _check(file=str(path)) == (0, f"OK: 4 hosts in {path}\n")


def test_check_command_lists_problems_and_exits_2():
    path = DATA / "bad" / "ssh_unknown_key.yaml"
    status, output = _check(file=str(path))
    assert status == 2
    lines = output.splitlines()
    assert lines[-1] == f"2 problems in {path}"
    assert [line for line in lines[:-1] if line] == [str(p) for p in check_inventory(path)]


def test_check_command_defaults_to_xenhil_lab(monkeypatch):
    path = DATA / "good" / "minimal.yaml"
    monkeypatch.setenv("XENHIL_LAB", str(path))
    assert _check() == (0, f"OK: 1 hosts in {path}\n")
    monkeypatch.delenv("XENHIL_LAB")
    assert _check(lab=str(path))[0] == 0
    with pytest.raises(ConfigError, match="no lab inventory given"):
        _check()


def test_xenhil_lab_check_verb(capsys):
    from xenhil.harness.cli.main import main
    assert main(["lab", "check", str(DATA / "good" / "minimal.yaml")]) == 0
    assert main(["lab", "check", str(DATA / "bad" / "unknown_capability.yaml")]) == 2
    assert "unknown capability 'iomu'" in capsys.readouterr().out


def test_check_command_from_a_fresh_interpreter():
    code = ("import argparse, sys; from xenhil.harness.cli.lab_check import check_command; "
            "sys.exit(check_command(argparse.Namespace(file=sys.argv[1], learn=False, lab=None)))")
    good = subprocess.run([sys.executable, "-c", code, str(DATA / "good" / "minimal.yaml")],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert (good.returncode, good.stdout.strip()) == (
        0, f"OK: 1 hosts in {DATA / 'good' / 'minimal.yaml'}")
    bad = subprocess.run([sys.executable, "-c", code, str(DATA / "bad" / "inline_password.yaml")],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert bad.returncode == 2 and "inline passwords are not allowed" in bad.stdout
    assert SECRET_MARK not in bad.stdout + bad.stderr


# --- --learn against a real sshd -----------------------------------------

def _unpinned_inventory(tmp_path: Path, address: str, port: int) -> Path:
    path = tmp_path / "lab.yaml"
    path.write_text(f"hosts:\n  - name: fresh\n    address: {address}\n"
                    f"    ssh: {{port: {port}}}\n    power: {{kind: ssh-reboot}}\n")
    return path


def test_learn_fetches_logs_and_prints_the_host_key(fresh_sshd_server: SSHServer,  # noqa: F811
                                                    tmp_path: Path, caplog):
    server = fresh_sshd_server
    path = _unpinned_inventory(tmp_path, server.address, server.port)
    expected_fp = subprocess.run(["ssh-keygen", "-lf", f"{server.host_key_file}.pub"],
                                 capture_output=True, text=True, check=True).stdout.split()[1]

    with caplog.at_level(logging.WARNING, logger="xenhil.lab.inventory"):
        status, output = _check(file=str(path), learn=True)

    assert status == 2  # the file itself still lacks the pin
    assert f'      host_key: "{server.host_key}"' in output.splitlines()
    assert f"fingerprint {expected_fp}" in output
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("trust on first use" in r.getMessage() and "'fresh'" in r.getMessage()
               and expected_fp in r.getMessage() for r in warnings)
    assert path.read_text().count("host_key") == 0  # the user's YAML is not rewritten

    [problem] = check_inventory(path, learn=True)
    assert problem.learned_host_key == server.host_key
    # Pinning the printed key makes the inventory valid.
    path.write_text(path.read_text().replace(
        f"{{port: {server.port}}}", f'{{port: {server.port}, host_key: "{server.host_key}"}}'))
    assert _check(file=str(path), learn=True)[0] == 0


def test_learn_with_nothing_listening_says_it_could_not(tmp_path: Path):
    import socket
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = _unpinned_inventory(tmp_path, "127.0.0.1", port)
    [problem] = check_inventory(path, learn=True)
    assert problem.learned_host_key is None
    assert problem.fix.startswith(f"could not learn the key from 127.0.0.1:{port}")
