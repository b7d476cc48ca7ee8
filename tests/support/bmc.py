"""A real virtual BMC (harness.lab.virtual.bmc, pyghmi) for tests.

The BMC daemon runs as its own process on 127.0.0.5 and a free UDP port and
powers ``sleep 1000`` as its machine; tests drive it with the real
``ipmitool``.  The fixture stops the BMC (and so its machine) by pid, also
when the test fails.

Fixtures (import them explicitly into a test module)::

    from tests.support.bmc import bmc_password, virtual_bmc  # noqa: F401

- ``bmc_password``: a random password, exported in ``BMC_PASSWORD_ENV`` for
  the test's duration (the BMC and the CredentialRef read it from there).
- ``virtual_bmc``: a running :class:`harness.lab.virtual.bmc.BMCProcess`,
  machine powered off.
- :func:`power_config` builds the inventory's PowerConfig for it.
"""
from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
from pathlib import Path
from typing import Iterator

import pytest

from xenhil.harness.lab.model import CredentialRef, PowerConfig
from xenhil.harness.lab.virtual.bmc import BMCProcess, start_bmc_process

BMC_ADDRESS = "127.0.0.5"
BMC_USER = "admin"
BMC_PASSWORD_ENV = "XENHIL_TEST_BMC_PASSWORD"
MACHINE_ARGV = ["sleep", "1000"]


def require_ipmitool() -> None:
    if shutil.which("ipmitool") is None:
        pytest.skip("ipmitool is not installed (apt-get install ipmitool)")


def free_udp_port(address: str = BMC_ADDRESS) -> int:
    """A UDP port nobody listens on at ``address`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_bmc(workdir: Path, argv: list[str] | None = None,
                address: str = BMC_ADDRESS, **kw) -> Iterator[BMCProcess]:
    """A BMC daemon for the block; stopped by pid on the way out."""
    bmc = start_bmc_process(address, free_udp_port(address), BMC_USER, BMC_PASSWORD_ENV,
                            argv or MACHINE_ARGV, workdir, **kw)
    try:
        yield bmc
    finally:
        bmc.stop()


def power_config(bmc: BMCProcess, password: CredentialRef | None = None) -> PowerConfig:
    """The inventory's power section for ``bmc``."""
    return PowerConfig(kind="ipmi", address=bmc.address, port=bmc.port, user=bmc.user,
                       password=password or CredentialRef(env=BMC_PASSWORD_ENV))


def ipmitool_argv(bmc: BMCProcess, *args: str) -> list[str]:
    """A plain ipmitool command line for ``bmc`` (password from IPMI_PASSWORD via -E)."""
    return ["ipmitool", "-I", "lanplus", "-H", bmc.address, "-p", str(bmc.port),
            "-U", bmc.user, "-E", *args]


@pytest.fixture
def bmc_password(monkeypatch) -> str:
    password = "pw-" + secrets.token_hex(8)
    monkeypatch.setenv(BMC_PASSWORD_ENV, password)
    return password


@pytest.fixture
def virtual_bmc(tmp_path, bmc_password) -> Iterator[BMCProcess]:
    require_ipmitool()
    with running_bmc(tmp_path / "bmc") as bmc:
        yield bmc


__all__ = ["BMC_ADDRESS", "BMC_USER", "BMC_PASSWORD_ENV", "free_udp_port", "running_bmc",
           "power_config", "ipmitool_argv", "bmc_password", "virtual_bmc", "require_ipmitool"]
