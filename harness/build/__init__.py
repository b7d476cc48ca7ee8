"""Source builds (`xenhil build`): Debian's Xen 4.17 and QEMU 7.2 sources plus
a patch series into a dist tree that ``--xen-build`` takes.  See
:mod:`harness.build.engine` for the stages, :mod:`harness.build.cache` for
the cache, :mod:`harness.build.recipes` for what is built and how."""
