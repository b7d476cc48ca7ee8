"""Per-server ioreq latency: timed reads of a port each server owns, in turn
with the Xen-internal PIT (never leaves Xen), the probe ioreq server side by
side with QEMU when the split has it, recorded with host, split and build,
and compared with the history of the same host, split and build class
(harness.results.latency: the rule and its figures)."""
import warnings

from xenhil.harness.attach import attach_latency
from xenhil.harness.checks.failure import fail
from xenhil.harness.checks.latency import (LatencyRegressionNotConfirmed, confirmed_latency_regressions,
                                           measure_latency_watched, refile_on_contended_host)
from xenhil.harness.results.plots import latency_distribution_png

# A port each model owns that is harmless to read: the keyboard controller's
# status port belongs to the model with `ui`, the first IDE status port to
# the model with `ide`.
PORT_OF_CLASS = {"ui": 0x64, "ide": 0x1f7, "serial": 0x3fd}
DEFAULT_SAMPLES = 100_000


def test_per_server_latency_has_not_regressed(request, guest, catalog_split, booted_build,
                                              results_store):
    split = guest.config.split
    split_id = catalog_split.id  # "single+probe", not the device_models split "single"
    ports = {}
    for dclass, port in PORT_OF_CLASS.items():
        owner = split.owner_of(dclass)
        if owner is not None and owner not in ports:
            ports[owner] = port
    probe = guest.companion("probe")
    if probe is not None:
        ports[probe.name] = probe.settings.id_port  # its ID register: never all ones
    count = request.config.getoption("--latency-samples") or \
        guest.host.spec.profile.latency_samples(DEFAULT_SAMPLES)
    # On a virtual host the emulator's CPU wait is watched too: a regression
    # measured while its machine was busy elsewhere is refiled (below).
    rows, wait = measure_latency_watched(guest, ports, count=count)
    waits = [wait]
    # The single split's QEMU is model "0" (the series' default name): say
    # what it is in the legend; rows and history keep the model name.
    def legend(server: str) -> str:
        return f"qemu, model {server}" if split.is_single and server == split.model_names[0] else server

    def plot_and_attach(measured, name: str) -> None:
        plot = latency_distribution_png({f"{legend(r.server)} ({r.port})": r.samples for r in measured},
                                        guest.artifacts_dir / "latency" / f"{name}.png",
                                        f"ioreq latency, split={split_id} on {guest.host.name}")
        attach_latency([r.to_dict() for r in measured], plot, name=name)

    plot_and_attach(rows, "latency")
    store, run_id = results_store

    def measure_again():
        again, wait_again = measure_latency_watched(guest, ports, count=count,
                                                    evidence_dir="latency/measured-again")
        waits.append(wait_again)
        plot_and_attach(again, "latency-measured-again")
        return again, wait_again

    # The build id as this host booted it (an emulated host adds Xen
    # options): the one the run record and the host's records carry too.
    verdicts = confirmed_latency_regressions(store, run_id, guest.host.name, split_id,
                                             booted_build.label, rows, measure_again,
                                             emulated=guest.host.spec.profile.emulated, wait=wait)
    for text in verdicts.unconfirmed:
        warnings.warn(LatencyRegressionNotConfirmed(
            f"{text}; not shown by both measurements, so not a regression "
            f"(evidence: {guest.artifacts_dir / 'latency'})"))
    if verdicts.confirmed:
        evidence = {"latency rows": str(guest.artifacts_dir / "latency")}
        refile_on_contended_host(verdicts.confirmed, waits, evidence)
        fail("ioreq latency against the history of this host, split and build class", expected="no latency regression",
             seen="; ".join(verdicts.confirmed), evidence=evidence)
