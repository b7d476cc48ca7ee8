"""The main job's secret demonstration (issue 15): one test that prints,
logs, attaches and writes into its artifacts every secret of the lab
inventory given with ``--lab``, in every form a leak takes (as is, base64
also inside a header, hex, URL- and JSON-escaping, repr, a long prefix,
one line of a key), and passes.  Run beside the suites, so the job's own
closing scan reads what it wrote:

    scripts/main-job tests/main_job/leak_every_lab_secret.py

The job must end green with "secret scan: none of ..."; putting one of the
printed forms back into any file of the run (unmasked) must then fail
`xenhil report --scan-secrets`.  Not collected by the framework's tests
(its name does not start with test_); pytest runs it when named.
"""
from __future__ import annotations

import base64
import json
import logging
import urllib.parse

import allure

from xenhil.harness.attach import attach_text, current_test_artifact_dir
from xenhil.harness.lab.inventory import load_inventory
from xenhil.harness.results.secret_scan import inventory_secrets

log = logging.getLogger("main_job.leaky")


def leak_forms(value: str) -> dict[str, str]:
    """The shapes a secret takes when code leaks it (written independently
    of harness.secrets' list, which it checks)."""
    raw = value.encode()
    forms = {
        "as-is": value,
        "base64": base64.b64encode(raw).decode(),
        "base64 in a header": "Authorization: Basic " + base64.b64encode(b"ADMIN:" + raw).decode(),
        "urlsafe base64": base64.urlsafe_b64encode(raw).decode(),
        "hex": raw.hex(),
        "HEX": raw.hex().upper(),
        "URL-escaped": urllib.parse.quote(value, safe=""),
        "JSON-escaped": json.dumps({"password": value}),
        "repr": repr(value),
        "long prefix": value[: len(value) * 3 // 4],
    }
    key_lines = [line for line in value.splitlines() if len(line.strip()) >= 16 and "-----" not in line]
    if key_lines:
        forms["one line of a key"] = key_lines[len(key_lines) // 2]
    return forms


def test_every_lab_secret_in_every_form_reaches_every_output(request):
    inventory = load_inventory(request.config.getoption("--lab"))
    secrets = inventory_secrets(inventory)
    assert secrets, f"{inventory.path} references no secret: nothing to demonstrate"
    text = "\n".join(f"{what} {form}: {shown}" for value, what in secrets.items()
                     for form, shown in leak_forms(value).items())
    print("stdout:", text)
    log.warning("log record:\n%s", text)
    attach_text(text, "every lab secret, every form")
    allure.attach(text, name="raw allure attachment", attachment_type=allure.attachment_type.TEXT)
    folder = current_test_artifact_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tool.log").write_text("a tool's own log, written past the scrubber:\n" + text + "\n")
    allure.dynamic.description(f"{len(secrets)} secret(s) of {inventory.path} printed in "
                               f"{sum(len(leak_forms(v)) for v in secrets)} forms")
