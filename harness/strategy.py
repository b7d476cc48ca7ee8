"""How a leased host gets where a test needs it: dom0 running the run's
build, then a booted guest of the test's split.

labgrid's strategies are the model (labgrid/strategy/shellstrategy.py): one
object per host and process, and transitions that do only what is missing
(the host's own state machine, harness.host, takes it from off to dom0
answering), so a test on a host that already runs the build and the guest
costs a store lookup.  The first failure latches, as there: provisioning
marks the host broken (harness.xen.provision), and every later transition
on it raises at once (``Host.raise_if_broken``) instead of installing and
rebooting again.

The build a host boots is the run's build as its kind of host boots it
(``RunConfig.booted_build``: an emulated host adds Xen options).  The
strategy returns it and keeps it (:attr:`XenStrategy.booted`), and the
fixtures take it from there, so the host's record in the lease store, its
guests' records, the run record and the latency rows carry one build id.
"""
from __future__ import annotations

import logging

from xenhil.harness.xen.build import XenBuild
from xenhil.harness.xen.catalog import CatalogSplit

log = logging.getLogger("xenhil.strategy")


def guest_build(label: str, entry: CatalogSplit) -> str:
    """What a booted guest is shared by, besides its split: the build its
    host booted, and the fault planted in its probe (a mutant run,
    --probe-fault): a guest whose probe misbehaves is never a clean run's,
    nor a clean one a mutant run's."""
    fault = entry.probe_settings.fault if entry.probe_settings is not None else None
    return f"{label} probe-fault={fault}" if fault else label


def note_provisioned(lab, host_name: str, label: str, rebooted: bool = False) -> None:
    """Record that ``host_name`` runs the build ``label`` (claims prefer it
    for this build).  Guests recorded on it of another build, or of any
    build when it was ``rebooted``, ended with dom0: their records go."""
    store = lab.pool.store
    gone = store.record_build(host_name, label, lab.holder)
    if rebooted:
        gone += [r for r in store.guests(host_name) if store.forget_guest(host_name, r.name)]
    for record in gone:
        log.info("guest %s on %s ended with its host's reboot into %s", record.name, host_name,
                 label)


class XenStrategy:
    """One host's way to dom0 running the run's build, then to a guest.

    ``lab``: the :class:`~xenhil.harness.lab.lab.Lab` holding the host's
    lease (its store says what the host runs, whoever provisioned it);
    ``run``: the :class:`~xenhil.harness.run_config.RunConfig` (the build)."""

    def __init__(self, host, lab, run) -> None:
        self.host = host
        self.lab = lab
        self.run = run
        #: The build the host runs, as it booted it (None until dom0).
        self.booted: XenBuild | None = None

    def to_dom0(self) -> XenBuild:
        """dom0 up and running the run's build; the build as booted.

        Checked on every call: another process of the run, or another run,
        may have provisioned the host since this one last held it, and the
        lease store records what it runs."""
        from xenhil.harness.host import HostState
        from xenhil.harness.xen.provision import provision
        build = self.run.booted_build(self.host.spec.profile)
        if self.host.state is not HostState.DOM0_READY:    # off, booting, unknown
            self.host.ensure_ready()
        recorded = self.lab.pool.store.host_builds().get(self.host.name)
        if self.host.facts.get("build_id") != build.build_id or recorded != build.label:
            rebooted = provision(self.host, build)
            note_provisioned(self.lab, self.host.name, build.label, rebooted)
        self.booted = build
        return build

    def runs(self, build: XenBuild) -> None:
        """The host runs ``build`` by other means than :meth:`to_dom0` (a
        stand-in host of the framework's tests): dom0, no provisioning."""
        self.booted = build

    def to_guest(self, pool, entry: CatalogSplit, *, exclusive: bool = False):
        """A booted guest of the split ``entry`` on dom0 running the run's
        build: the pool's (``fixtures.guest.GuestPool``), shared with every
        test that holds the host after this one unless ``exclusive``.  From
        dom0 as this test found it (:meth:`to_dom0`, the ``xen_host``
        fixture), else by way of it."""
        build = self.booted if self.booted is not None else self.to_dom0()
        return pool.get(self.host, entry, guest_build(build.label, entry), exclusive=exclusive)
