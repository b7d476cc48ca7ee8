"""The framework's own tests.

numpy's C core can be loaded once per process, and pytester's in-process
runs (``runpytest_inprocess``) unload the modules first imported during
them; a test whose run imported numpy (the latency rule, scipy; the
report's plots, matplotlib) then left the next one an "ImportError: cannot
load module more than once per process", depending on the order the tests
ran in.  Loaded here, before any of them, they stay loaded.
"""
import xenhil.harness.report  # noqa: F401  (scipy, numpy)
import xenhil.harness.results.plots  # noqa: F401  (matplotlib, numpy)
