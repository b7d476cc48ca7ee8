"""A host of the running lab (--lab), leased and brought to dom0 ready for
the real-Xen tests of one module, released at the end."""
from __future__ import annotations

import contextlib
from typing import Iterator

#: How long a module waits for a free host of the lab.
CLAIM_TIMEOUT_S = 1800


@contextlib.contextmanager
def leased_ready_host(request) -> Iterator[object]:
    lab = request.getfixturevalue("lab")
    lease = lab.claim(set(), {}, timeout=CLAIM_TIMEOUT_S)
    try:
        host = lab.host_object(lease.host)
        host.ensure_ready()
        yield host
    finally:
        lab.release(lease)
