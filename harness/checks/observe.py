"""What the checks read of a guest's ioreq servers, once per guest domain.

The suites combine observations with the checks' pure functions (pci.py,
routing.py, ...).  What cannot change while a domain lives is read by the
first test that needs it and shared by the tests after it
(:meth:`harness.guest.Guest.observe`; a restored guest is a new domain and is
read again):

- which ioreq server is which model: the servers are created when the models
  start (``xen_ioreq_server_create`` in each model's trace, and the
  companions' own report);
- the servers' rangesets (``xl debug-keys q``): the models register their
  ranges when they start and when the guest's firmware and kernel program
  the BARs, both over before the guest is ready.

What a test's own workload changes (the I/O each model traced, a probe's
counters) is read by that test, after its workload, not here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from xenhil.harness.checks.failure import save_evidence
from xenhil.harness.checks.pci import companion_servers, read_model_traces, server_ids_by_model
from xenhil.harness.xen.parsers.errors import UnexpectedOutput
from xenhil.harness.xen.parsers.rangesets import DomainServers


@dataclass(frozen=True)
class ServerMap:
    """Ioreq server id -> the model (or companion) that created it, and
    where the traces it was read from are."""

    models: dict[int, str]
    evidence: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Rangesets:
    """The guest domain's ioreq servers with their rangesets, and the saved
    ``xl debug-keys q`` dump they were parsed from."""

    servers: DomainServers
    evidence: dict[str, str] = field(default_factory=dict)


def observe_servers(guest, model_logs: Mapping[str, str]) -> ServerMap:
    """Which ioreq server is which model, for the guest's current domain.
    A failure (a model without exactly one live server) is not kept: the
    next test reads again and fails with its own evidence."""
    def read() -> ServerMap:
        traces, evidence = read_model_traces(guest.host, model_logs)
        return ServerMap(server_ids_by_model(traces, evidence, companion_servers(guest)), evidence)
    return guest.observe("ioreq servers by model", read)


def observe_rangesets(guest) -> Rangesets:
    """The guest domain's ioreq servers' rangesets, one dump per domain,
    saved under the guest's artifacts."""
    def read() -> Rangesets:
        from xenhil.harness.xen.parsers.rangesets import parse_ioreq_rangesets
        text = guest.xl.rangesets_text()
        path = save_evidence(Path(guest.artifacts_dir) / "servers", f"rangesets-dom{guest.domid}.txt", text)
        domains = parse_ioreq_rangesets(text)
        if guest.domid not in domains:
            raise UnexpectedOutput("xl debug-keys q", f"no ioreq server listed for guest {guest.name}'s "
                                                      f"domain {guest.domid} (domains: {sorted(domains)}); "
                                                      f"dump in {path}")
        return Rangesets(domains[guest.domid], {"xl debug-keys q": path})
    return guest.observe("ioreq server rangesets", read)
