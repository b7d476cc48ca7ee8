"""The lab a run or a command works with: one object for the pytest plugin
and the command line (labgrid's Environment is the model).

A :class:`Lab` holds the inventory, the lease pool (the store opened on
first use: ``xenhil host run`` never touches it), the :class:`Host` objects
of the hosts it reached, and the leases it holds with their heartbeats.
The plugin makes one per process from the run configuration
(fixtures.lab.open_lab); every ``xenhil`` verb that needs the lab makes
one from its options (harness.cli.common.open_lab).

What a caller does around a claim or a release is a callback, so this
module knows nothing of guests, health bookkeeping or pytest:
:attr:`Lab.on_claim` after a lease is taken, :attr:`Lab.on_release`
before every release, :attr:`Lab.before_release` before an interrupted
run gives a host back (its guests go first).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

log = logging.getLogger("xenhil.lab")


class Lab:
    """The inventory, its lease pool and the hosts and leases held."""

    def __init__(self, inventory, *, lab_db: str | None = None, ttl: float = 60.0,
                 holder=None, artifacts: Path = Path("artifacts")):
        self.inventory = inventory
        self.lab_db = lab_db
        self.ttl = ttl
        self.holder = holder
        self.artifacts = Path(artifacts)
        self._pool = None
        self._hosts: dict = {}               # name -> harness.host.Host
        self._held: dict[str, tuple] = {}    # lease id -> (lease, heartbeat)
        #: Called with a host's name once a claim has leased it.
        self.on_claim: list[Callable[[str], None]] = []
        #: Called with a host's name before every release (the guests'
        #: consoles are let go, a host latched broken is quarantined).
        self.on_release: list[Callable[[str], None]] = []
        #: Called with a host's name before an interrupted run releases it.
        self.before_release: list[Callable[[str], None]] = []

    @property
    def pool(self):
        """The lease pool (harness.lab.leases.Pool), its store opened on first use."""
        if self._pool is None:
            from xenhil.harness.lab.leases import Pool, open_store, resolve_store_url
            self._pool = Pool(open_store(resolve_store_url(self.lab_db, self.inventory)),
                              self.inventory, ttl=self.ttl)
        return self._pool

    # -- hosts -------------------------------------------------------------------
    def host_object(self, name: str):
        """The Host of ``name`` (made on first use; its connections are kept)."""
        if name not in self._hosts:
            from xenhil.harness.host import Host
            self._hosts[name] = Host(self.inventory.host(name), self.artifacts / "hosts" / name)
        return self._hosts[name]

    def reached(self, name: str):
        """The Host of ``name`` if it was made, else None."""
        return self._hosts.get(name)

    # -- leases ------------------------------------------------------------------
    def claim(self, tags: set[str], capabilities: dict, timeout: float, host: str | None = None,
              prefer=None):
        """Lease a host with these tags and capabilities (``host``: that
        one) and keep it alive with a heartbeat.  ``prefer``: the guest the
        caller needs (harness.lab.leases.GuestWish): a free host already
        running it, or its build, is taken first."""
        from xenhil.harness.lab.leases import Heartbeat

        lease = self.pool.claim(self.holder, tags=tuple(sorted(tags)),
                                capabilities=capabilities, timeout=timeout, host=host,
                                prefer=prefer)
        for callback in list(self.on_claim):
            callback(lease.host)
        heartbeat = Heartbeat(self.pool, lease)
        heartbeat.start()
        self._held[lease.id] = (lease, heartbeat)
        return lease

    def release(self, lease) -> None:
        for callback in list(self.on_release):
            try:
                callback(lease.host)
            except Exception:  # the lease goes back all the same
                log.exception("letting go of %s before releasing it failed", lease.host)
        _, heartbeat = self._held.pop(lease.id, (None, None))
        if heartbeat is not None:
            heartbeat.stop()
        host = self._hosts.get(lease.host)
        if host is not None:
            host.let_go_of_console()   # the next holder, maybe another process, needs the line
        self.pool.release(lease)

    def interrupted_release(self, lease) -> None:
        """An interrupted run gives a host back: what it left on it goes
        first (:attr:`before_release`), then the lease."""
        for callback in list(self.before_release):
            try:
                callback(lease.host)
            except Exception:  # the lease goes back all the same
                log.exception("cleaning %s up before releasing it failed", lease.host)
        self.release(lease)

    def check(self, lease) -> None:
        """Fail with LeaseLost when the heartbeat could not keep the lease."""
        _, heartbeat = self._held.get(lease.id, (None, None))
        if heartbeat is not None:
            heartbeat.check()

    def close(self) -> None:
        """Release whatever is still held (an interrupted run) and close the
        hosts' connections."""
        for lease_id in list(self._held):
            lease, _ = self._held[lease_id]
            try:
                self.release(lease)
            except Exception:  # keep releasing the others
                log.exception("releasing lease %s failed", lease_id)
        for host in self._hosts.values():
            host.close()
