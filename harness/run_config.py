"""The run configuration: a run's options, inventory, Xen build and split
catalog, parsed and checked once, before anything acts.

The pytest plugin builds one :class:`RunConfig` per process at start-up
(``pytest_configure``) and keeps it in ``config.stash``; the fixtures, the
scheduling and the report read it from there instead of asking pytest for
options, loading the inventory or the catalog, or computing the build
again.  A bad value is one :class:`~harness.errors.ConfigError` naming the
option and its fix (the plugin makes it pytest's one-line usage error), so
no host, lease or file is touched by a run that cannot start.

The lab options (``--lab``, ``--lab-db``) are declared here once, for the
plugin and for every ``xenhil`` verb (:data:`LAB_OPTIONS`).

One build id (the ``build_label`` of a host): what a host boots is the
run's build plus the options its kind of host needs
(:func:`harness.xen.build.as_booted_on`: an emulated host adds Xen command
line options, and a change of them changes what boots).  It is computed
here only (:meth:`RunConfig.booted_build`), and the run record, the
host's and its guests' records in the lease store, and the latency rows
all carry it.

No pytest here (the plugin is the only module of harness/ that imports it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from xenhil.harness.errors import ConfigError
from xenhil.harness.lab.profile import HostProfile

# --------------------------------------------------------------------------
# Tables: the options.  Change them here only.
# --------------------------------------------------------------------------

#: The environment variable that may replace --lab.
LAB_ENV = "XENHIL_LAB"

#: The options naming the lab, the same for ``pytest`` and every ``xenhil``
#: verb that needs a lab: name -> argparse/pytest ``add_argument`` keywords.
LAB_OPTIONS: dict[str, dict] = {
    "--lab": dict(default=None,
                  help=f"lab inventory YAML (default: ${LAB_ENV})"),
    "--lab-db": dict(default=None,
                     help="lease store URL: sqlite:///PATH (default: next to the inventory) "
                          "or postgresql://USER@HOST/DATABASE"),
}

#: Booted guests a host keeps for later tests unless --guests-per-host says
#: otherwise (fixtures.guest): an emulated host has one or two CPUs and
#: little memory, and two guests booting at once on it crashed (README
#: "The virtual lab"); a real host keeps more.
GUESTS_PER_EMULATED_HOST = 2
GUESTS_PER_HOST = 4


def lab_option(value: object) -> str | None:
    """--lab as given, else $XENHIL_LAB, else None."""
    return str(value) if value else (os.environ.get(LAB_ENV) or None)


# --------------------------------------------------------------------------
# The configuration
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class RunConfig:
    """Everything a run was told, checked.  ``options`` keeps the checked
    values by option name (numbers as numbers) for what has no field."""

    lab: Path | None                     # the inventory's path (--lab / $XENHIL_LAB)
    lab_db: str | None
    reserve_timeout: float
    lease_ttl: float
    series: str | None
    artifacts: Path                      # --artifacts, resolved (the run's folder is under it)
    run_id: str | None                   # --run-id, None: made at start-up
    build: object                        # harness.xen.build.XenBuild: the build as given
    inventory: object | None             # harness.lab.model.Inventory, None without --lab
    catalog: object                      # harness.xen.catalog.Catalog
    splits: tuple[str, ...]              # the catalog ids this run parametrises (--split)
    guests_per_host: int | None
    results_db: str | None
    options: Mapping[str, object] = field(default_factory=dict)
    # --probe-fault, canonical (harness.probe_dm.faults): a mutant run; the
    # catalog's probes carry it.  None: a clean run.
    probe_fault: str | None = None
    _booted: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def hosts(self) -> list:
        """The inventory's hosts (HostSpec), [] without a lab."""
        return list(self.inventory.hosts.values()) if self.inventory is not None else []

    def booted_build(self, profile: HostProfile):
        """The build as a host of this profile boots it (the one place that
        asks harness.xen.build.as_booted_on); computed once per kind of host."""
        from xenhil.harness.xen.build import as_booted_on
        if profile not in self._booted:
            self._booted[profile] = as_booted_on(self.build, profile)
        return self._booted[profile]

    def build_label_on(self, profile: HostProfile) -> str:
        """The build id a host of this profile records and reports."""
        return self.booted_build(profile).label

    @property
    def build_label(self) -> str:
        """The run's build id: what every host of the inventory boots (the
        same for all of them on a lab of one kind, the virtual lab
        included).  On a lab mixing real and emulated hosts they boot
        different things: the run then names the build as given, and
        each host's records and rows carry its own booted build."""
        labels = {self.build_label_on(h.profile) for h in self.hosts}
        return labels.pop() if len(labels) == 1 else self.build.label


def guests_per_host(option: int | None, profile: HostProfile) -> int:
    """Booted guests a host of this profile keeps (``option``:
    --guests-per-host, when given)."""
    if option is not None:
        return option
    return GUESTS_PER_EMULATED_HOST if profile.emulated else GUESTS_PER_HOST


def parse_run_config(values: Mapping[str, object], inventory=None) -> RunConfig:
    """The run configuration from the options by name (``"--lab"``, ...;
    a missing one takes its default).  The first problem raises
    ConfigError naming the option and its fix; the order is that of a
    user's fixes: the options, then the inventory, the build and the
    splits.  ``inventory``: the one at --lab, when the caller read it
    already (the plugin does, to mask its secrets first)."""
    from xenhil.harness.lab.inventory import load_inventory
    from xenhil.harness.options import check_pytest_options
    from xenhil.harness.xen.build import load_build
    from xenhil.harness.xen.catalog import load_catalog

    raw = dict(values)
    raw["--lab"] = lab_option(raw.get("--lab"))
    raw.setdefault("--artifacts", "artifacts")
    checked = check_pytest_options(raw)          # numbers, paths, URLs; the inventory is read
    lab = Path(checked["--lab"]) if checked.get("--lab") else None
    if lab is None:
        inventory = None
    elif inventory is None or Path(inventory.path) != Path(os.path.abspath(lab)):
        inventory = load_inventory(lab)
    guests = checked.get("--guests-per-host")
    if guests is not None and int(guests) < 1:
        raise ConfigError(f"--guests-per-host {guests}: must be 1 or more",
                          help="a host must keep the guest its test runs on: give 1 or more "
                               f"(default {GUESTS_PER_EMULATED_HOST} on an emulated host, "
                               f"{GUESTS_PER_HOST} on others)")
    build = load_build(checked.get("--xen-build"))
    catalog = load_catalog()
    splits = chosen_splits(catalog, list(checked.get("--split") or ()))
    fault = probe_fault(checked.get("--probe-fault"), catalog, splits)
    if fault is not None:
        catalog = catalog.with_probe_fault(fault)
    return RunConfig(
        lab=lab, lab_db=checked.get("--lab-db"),
        reserve_timeout=float(checked["--reserve-timeout"]),
        lease_ttl=float(checked["--lease-ttl"]),
        series=checked.get("--series"),
        artifacts=Path(str(checked["--artifacts"])).resolve(),
        run_id=checked.get("--run-id"),
        build=build, inventory=inventory, catalog=catalog, splits=splits,
        guests_per_host=int(guests) if guests is not None else None,
        results_db=checked.get("--results-db"),
        options=checked, probe_fault=fault)


def probe_fault(value: object, catalog, splits: tuple[str, ...]) -> str | None:
    """--probe-fault in canonical form, or None; refused when none of the
    run's splits has the probe (the mutant would silently run clean)."""
    if value is None:
        return None
    from xenhil.harness.probe_dm.faults import parse_fault
    fault = parse_fault(str(value), "--probe-fault").text
    with_probe = [s for s in catalog.ids() if catalog.get(s).probe]
    if not any(s in with_probe for s in splits):
        raise ConfigError(f"--probe-fault {fault}: none of the run's splits has the probe",
                          help=f"add --split with a probe split ({', '.join(with_probe)})")
    return fault


def chosen_splits(catalog, wanted: list[str]) -> tuple[str, ...]:
    """The catalog ids a run parametrises: those given with --split (in
    the catalog's order), every one when none is given.  An id the
    catalog does not have is refused, all such ids named at once: a typo
    would otherwise run nothing of that split and pass."""
    from xenhil.harness.options import shown
    known = catalog.ids()
    unknown = [s for s in dict.fromkeys(wanted) if s not in known]
    if unknown:
        names = ", ".join(shown(s) for s in unknown)
        raise ConfigError(f"--split {names}: not {'a split' if len(unknown) == 1 else 'splits'} "
                          f"of the catalog {catalog.path}",
                          help=f"give a catalog id: {', '.join(known)} (repeat --split for "
                               f"several; `xenhil split check MODEL...` checks a new split)")
    return tuple(i for i in known if not wanted or i in wanted)


__all__ = ["LAB_ENV", "LAB_OPTIONS", "RunConfig", "parse_run_config", "chosen_splits", "probe_fault",
           "lab_option", "guests_per_host", "GUESTS_PER_HOST", "GUESTS_PER_EMULATED_HOST"]
