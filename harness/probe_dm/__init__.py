"""The probe device model: a small second ioreq server written in Python.

Upstream Xen 4.17's xl starts exactly one QEMU per HVM guest.  To test
routing between several ioreq servers on such a host, the framework adds its
own server next to QEMU: it claims a few I/O ports, one PCI function (with a
real config space and one 32-bit memory BAR) and answers every request with
simple, checkable behaviour (scratch registers, an ID register, counters).

Layout (dom0 side first; nothing here imports paramiko or pytest, so the
dom0 copy needs only ``harness/__init__.py``, ``harness/errors.py`` and this
package):

- :mod:`.xenlibs`: ctypes bindings to Xen's own libraries
  (libxendevicemodel, libxenforeignmemory, libxenevtchn) and the ioreq ABI.
- :mod:`.emulation`: what the device does with a request (pure logic).
- :mod:`.server`: the ioreq server's lifecycle and event loop, the counters file.
- :mod:`.__main__`: the command run in dom0 (with a crash supervisor).
- :mod:`.host`: the test-machine side: copy to dom0, start, read, stop.

The counters file format is documented in :mod:`.server`.
"""

#: Identifies the counters file format (``"format"`` key).
COUNTERS_FORMAT = "xenhil-probe-counters/1"
