"""The one failure a parser raises: the text did not have the shape of the
tool's documented output."""
from __future__ import annotations

from xenhil.harness.errors import ProductError


class UnexpectedOutput(ProductError):
    """A Xen/QEMU tool printed something its parser cannot read.

    Classed as a product failure: the text comes from the system under test
    (``xl``, Xen's console, QEMU's trace log).  When the cause is a new tool
    version that legitimately changed its format, the parser needs updating;
    the message names the source, line and text so that is quick to see.
    """

    help = ("The tool's output did not have the format xenhil parses (see source/line). "
            "If the tool's version changed its format on purpose, update the parser; "
            "otherwise the tool misbehaved.")

    def __init__(self, source: str, message: str, *, line_no: int | None = None,
                 line: str | None = None, **kw):
        self.source, self.line_no, self.line = source, line_no, line
        where = f"{source}, line {line_no}" if line_no is not None else source
        text = f"{where}: {message}"
        if line is not None:
            shown = line if len(line) <= 200 else line[:200] + "..."
            text += f"\n  line: {shown!r}"
        super().__init__(text, **kw)
