"""Pure parsers of what Xen, xl, QEMU and the guest probe print.

Functions over text only: they never open a connection or a file.  Each
raises ``UnexpectedOutput`` (a ProductError naming the source and line) when
the text is not in the tool's format.

- ``rangesets``: ``xl dmesg`` after ``xl debug-keys q`` -> ioreq server ranges
- ``lspci``: lspci -n/-nn/-mn, busybox lspci, sysfs listings -> PciDevice
- ``qemu_trace``: QEMU log-backend trace lines -> TraceEvent
- ``xl_info``, ``xl_list``: ``xl info``, ``xl list`` / ``xl list -l``
- ``probe_output``: the guest probe xhprobe's JSON lines
"""
from xenhil.harness.xen.parsers.errors import UnexpectedOutput
from xenhil.harness.xen.parsers.lspci import PciDevice, parse_pci_listing
from xenhil.harness.xen.parsers.probe_output import ProbeFailed, parse_probe_output
from xenhil.harness.xen.parsers.qemu_trace import TraceEvent, parse_trace_log
from xenhil.harness.xen.parsers.rangesets import (owner_of_port, overlaps, owners, parse_ioreq_rangesets,
                                                  sbdf_to_str, str_to_sbdf)
from xenhil.harness.xen.parsers.xl_info import XlInfo, parse_xl_info
from xenhil.harness.xen.parsers.xl_list import DomainEntry, parse_xl_list, parse_xl_list_long

__all__ = [
    "UnexpectedOutput", "PciDevice", "parse_pci_listing", "ProbeFailed", "parse_probe_output",
    "TraceEvent", "parse_trace_log", "owner_of_port", "overlaps", "owners", "parse_ioreq_rangesets",
    "sbdf_to_str", "str_to_sbdf", "XlInfo", "parse_xl_info", "DomainEntry", "parse_xl_list",
    "parse_xl_list_long",
]
